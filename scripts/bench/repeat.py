#!/usr/bin/env python3
"""The interleaved checks of the `overhead` bench, run in many processes one after another.

A best-of-rounds figure from one process depends on the slow or fast period of the machine the
process fell in, so this script builds the bench, runs its interleaved checks in N processes and
prints each figure's median and range, and how many processes met the consecutive-mode target.

Usage: python3 scripts/bench/repeat.py [processes, default 16]
"""
import json
import re
import statistics
import os
import subprocess
import sys

WORKSPACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def bench_binary():
    out = subprocess.run(
        ["cargo", "bench", "-p", "wsguard-circuit-breaker", "--bench", "overhead", "--no-run",
         "--message-format=json"],
        cwd=WORKSPACE, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "overhead" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("repeat.py: the overhead bench binary was not built")


def run(binary):
    out = subprocess.run([binary, "--bench", "^nothing$"], check=True, capture_output=True,
                         text=True).stdout
    figures = {}
    for line in out.splitlines():
        m = re.match(r"interleaved ([a-z ()]+), best of [^:]+: (.*)", line)
        if not m:
            continue
        for name, ns in re.findall(r"([a-z0-9][a-z0-9 ]*?) ([0-9.]+) ns", m.group(2)):
            figures[f"{m.group(1)}: {name}"] = float(ns)
    c = lambda name: figures[f"consecutive: {name}"]
    t = lambda name: figures[f"time window: {name}"]
    w = lambda name: figures[f"two threads (consecutive): {name}"]
    figures["consecutive: ratio of overheads"] = \
        (c("wsguard") - c("bare")) / (c("failsafe") - c("bare"))
    figures["time window: ratio of overheads"] = \
        (t("wsguard") - t("bare")) / (t("failsafe") - t("bare"))
    figures["two threads: sharing one breaker / 1 thread"] = \
        w("2 threads sharing one breaker") / w("wsguard 1 thread")
    figures["two threads: a breaker each / 1 thread"] = \
        w("2 threads with a breaker each") / w("wsguard 1 thread")
    return figures


def main():
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    binary = bench_binary()
    runs = []
    for i in range(processes):
        f = run(binary)
        runs.append(f)
        print(f"process {i + 1:2}: consecutive {f['consecutive: wsguard']:.2f} / "
              f"{f['consecutive: failsafe']:.2f} ns ({f['consecutive: ratio of overheads']:.2f}), "
              f"time window {f['time window: wsguard']:.2f} / {f['time window: failsafe']:.2f} ns "
              f"({f['time window: ratio of overheads']:.2f}), 2 threads / 1 thread "
              f"{f['two threads: sharing one breaker / 1 thread']:.2f}", flush=True)
    print()
    print(f"Over {processes} processes:")
    print()
    print("| figure | median | lowest | highest |")
    print("|---|---:|---:|---:|")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")
    met = sum(r["consecutive: ratio of overheads"] <= 0.5 for r in runs)
    print()
    print(f"Consecutive-mode ratio at most 0.5 in {met} of {processes} processes.")


if __name__ == "__main__":
    main()
