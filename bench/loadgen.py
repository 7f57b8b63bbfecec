"""A lean WebSocket load generator: raw non-blocking sockets, a hand-written HTTP upgrade, a
minimal parser of the server's unmasked frames, masked client frames only for pong and close.

It runs as several worker processes (``multiprocessing``, spawn) driven over pipes by a
controller, ``LoadGen``, living in the benchmark runner's event loop. Each worker raises its
own open-files limit to the hard limit, so one worker can hold 10,000+ sockets.

Timestamps are ``CLOCK_REALTIME`` nanoseconds (``time.time_ns()``), comparable across
processes. Every read also carries the kernel's receive timestamp of the data
(``SO_TIMESTAMPNS``): the moment the server's bytes reached the observer's socket, which
does not depend on how quickly this generator gets round to reading it. Both are recorded
("kernel" and "user" timestamps); reports use the kernel one for latency and show the user
one beside it, with the CPU time the generator itself spent (``resource.getrusage``), so
nobody measures the generator by mistake.

Per delivery the hot path is: one ``recvmsg`` syscall, a frame header decode, one dict
lookup keyed by the payload bytes (a fanned-out event has the same bytes on every socket),
two appends to ``array('q')``. JSON is parsed once per distinct payload, not per delivery.

The parts live in ``bench.generator``: ``wire`` (the wire format), ``conn`` and ``group``
(one socket, the sockets of one role), ``worker`` and ``conncmds`` (a generator process and
its commands), ``controller`` (``LoadGen``). This module names what the rest of the
benchmark uses.
"""

from __future__ import annotations

import sys

from bench.generator.conn import Conn
from bench.generator.controller import LoadGen
from bench.generator.group import POLLER, EventRecord, Group, Poller
from bench.generator.wire import (
    ANC_SIZE,
    CLOSED,
    CLOSING,
    HANDSHAKE,
    OPEN,
    RECV_SIZE,
    SNAPSHOT,
    SO_TIMESTAMPNS,
    client_frame,
    decode_ts,
    upgrade_request,
)
from bench.generator.worker import Worker, cpu_seconds, raise_nofile_limit, worker_main

__all__ = [
    "ANC_SIZE",
    "CLOSED",
    "CLOSING",
    "HANDSHAKE",
    "OPEN",
    "POLLER",
    "RECV_SIZE",
    "SNAPSHOT",
    "SO_TIMESTAMPNS",
    "Conn",
    "EventRecord",
    "Group",
    "LoadGen",
    "Poller",
    "Worker",
    "client_frame",
    "cpu_seconds",
    "decode_ts",
    "raise_nofile_limit",
    "upgrade_request",
    "worker_main",
]

if __name__ == "__main__":  # pragma: no cover - a tiny manual check
    print("use: python -m bench.run --help", file=sys.stderr)
    sys.exit(2)
