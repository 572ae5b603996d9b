"""Summarise a py-spy `--format raw` profile: `python -m bench.profile_summary FILE [--top N] [--grep TEXT]`.

Prints the functions with the most samples on-CPU at the top of the stack (self) and anywhere in the
stack (total), as a share of the active samples. Idle threads (waiting on locks, sockets, sleeps) are
left out with py-spy's default (no --idle), so the shares are shares of CPU time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "process 123:"-style and thread roots py-spy puts first; they are not functions.
_ROOT = re.compile(r"^(process \d+|thread \(0x[0-9a-fA-F]+\)|.*\(pid \d+\))")


def parse(path: Path) -> tuple[Counter, Counter, int]:
    """(self samples by frame, total samples by frame, all samples)."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not _ROOT.match(f)]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return own, total, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--grep", default="", help="only frames containing this text in the 'total' list")
    args = parser.parse_args(argv)
    own, total, samples = parse(args.profile)
    if not samples:
        print("no samples")
        return 1
    print(f"{samples} samples\n\nself (on top of the stack):")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / samples:6.1f}%  {frame}")
    print("\ntotal (anywhere in the stack):")
    shown = 0
    for frame, n in total.most_common():
        if args.grep and args.grep not in frame:
            continue
        print(f"{100 * n / samples:6.1f}%  {frame}")
        shown += 1
        if shown >= args.top:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
