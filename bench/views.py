"""Page-like WebSocket clients that keep up with N^2 presence deliveries.

N distinct users connecting means N^2/2 presence frames (50 million at N=10,000, about
6 GB on loopback), far more than a Python loop can look at one by one. A coalescing server
writes many frames per ``send``, so a read holds many frames, and a ``View`` counts the
presence frames of a read with C-speed byte scans instead of walking them:

- ``recvmsg_into`` one shared buffer (no allocation per read), with the kernel's receive
  timestamp (``SO_TIMESTAMPNS``);
- the *fast path*: a read that starts on a frame boundary and holds none of the bytes that
  only other frames contain (close/ping/pong/binary/continuation/compressed headers,
  extended lengths: ``memchr`` each) is a run of small text frames, all JSON, and the number
  of presence frames in it is ``count(b'"type":"presence"')``; the last frame start is
  ``rfind(0x81)`` (0x81 cannot occur inside ASCII JSON or a 7-bit length), which tells
  whether the read ends inside a frame (kept for the next read);
- anything else (the handshake, the snapshot, pings, a close, compressed frames, frames
  split over reads) goes through a frame walk, which is always correct.

The marker is learnt from the first presence event that is parsed (JSON key order may
change), and the fast path is used only once it is known.

Clients offer ``permessage-deflate; client_max_window_bits`` like browsers; a compressed
message (RSV1) is inflated with ``zlib.decompressobj(-15)`` and the 4 bytes 00 00 ff ff
(RFC 7692), with a context per socket unless the server promised
``server_no_context_takeover``.

Verification: "full" views (a sample) keep their snapshot and every event and are checked
exactly afterwards (snapshot decoded, events applied by version). The others keep their
snapshot payload while a memory budget lasts; afterwards its users and online rows are
counted (a fast byte count, checked against a JSON decode) and compared with the presence
frames they received. The commands that drive views in the load generator's worker
processes are in ``bench.viewcmds``.

The parts live in ``bench.generator``: ``viewbase`` (the group of views, a view's state,
connecting and closing), ``viewread`` (the reads above), ``viewretry`` (reconnecting like
the page), ``viewcheck`` (the final-view check); ``View`` puts them together.
"""

from __future__ import annotations

import numpy as np

from bench.generator.viewbase import EXTENSIONS, ViewGroup
from bench.generator.viewcheck import ONLINE_MARKERS, Checking
from bench.generator.viewread import BUF, BUFS, SUSPECT, FrameReader
from bench.generator.viewretry import Reconnecting
from bench.generator.wire import (
    CLOSED,
    CLOSING,
    CONNECTING,
    DEFLATE_TAIL,
    HANDSHAKE,
    OPEN,
    RECV_SIZE,
    SNAPSHOT,
    time_ns,
)

HIST_EDGES = np.concatenate([[-1e12], np.logspace(-2, 5.5, 751), [1e12]])  # ms

__all__ = [
    "BUF",
    "BUFS",
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "DEFLATE_TAIL",
    "EXTENSIONS",
    "HANDSHAKE",
    "HIST_EDGES",
    "ONLINE_MARKERS",
    "OPEN",
    "RECV_SIZE",
    "SNAPSHOT",
    "SUSPECT",
    "View",
    "ViewGroup",
    "time_ns",
]


class View(FrameReader, Reconnecting, Checking):
    """One page-like client: one user's socket, reconnecting like the page if asked to.

    ``ViewBase`` holds the state (every attribute is a slot) and the connection attempts;
    the mixins add reading, reconnecting and the final check, without slots of their own."""

    __slots__ = ()
