#!/usr/bin/env python3
"""Builds of the `overhead` bench from different versions, their interleaved checks run in turn.

Code layout and the machine's slow periods move one process's figures more than most changes do,
so a change is judged by running the bench of each version one process after the other, for
several rounds, and comparing rounds in which both ran in a fast period.

Build each version's bench with
`cargo bench -p wsguard-circuit-breaker --bench overhead --no-run`, copy the executable it names,
then:

Usage: python3 scripts/bench/alternate.py ROUNDS BINARY BINARY...
"""
import statistics
import sys

from repeat import run

FIGURES = [
    "consecutive: wsguard",
    "consecutive: wsguard disabled",
    "consecutive: failsafe",
    "consecutive: ratio of overheads",
    "time window: wsguard",
    "time window: failsafe",
    "time window: ratio of overheads",
    "two threads: sharing one breaker / 1 thread",
]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    binaries = sys.argv[2:]
    results = [[] for _ in binaries]
    for i in range(rounds):
        cells = []
        for n, binary in enumerate(binaries):
            f = run(binary)
            results[n].append(f)
            cells.append(
                f"{n + 1}: consecutive {f['consecutive: wsguard']:.2f} / "
                f"{f['consecutive: failsafe']:.2f} ns ({f['consecutive: ratio of overheads']:.3f}), "
                f"time window {f['time window: wsguard']:.1f} / {f['time window: failsafe']:.1f} ns "
                f"({f['time window: ratio of overheads']:.2f}), 2 threads / 1 thread "
                f"{f['two threads: sharing one breaker / 1 thread']:.2f}")
        print(f"round {i + 1:2}: " + " | ".join(cells), flush=True)
    print()
    for n, binary in enumerate(binaries):
        print(f"{n + 1}: {binary}")
    print()
    print("| binary | figure | median | lowest | highest |")
    print("|---|---|---:|---:|---:|")
    for n in range(len(binaries)):
        for key in FIGURES:
            values = [f[key] for f in results[n]]
            print(f"| {n + 1} | {key} | {statistics.median(values):.3f} | {min(values):.3f} | "
                  f"{max(values):.3f} |")


if __name__ == "__main__":
    main()
