"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): the functions with the most
samples on the stack (inclusive) and at the top (self).

    python -m bench.pyspy_summary /tmp/prof/01-app-0-1234.txt [--top 30] [--match ws.py]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarise(path: Path, top: int, match: str | None) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [
            short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if match and not any(match in f for f in frames):
            continue
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    out = [
        f"{path.name}: {total} samples" + (f" with {match!r} on the stack" if match else ""),
        "",
        "inclusive:",
    ]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy_summary", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", help="only stacks with a frame containing this text")
    args = parser.parse_args(argv)
    print(summarise(args.profile, args.top, args.match))
    return 0


if __name__ == "__main__":
    sys.exit(main())
