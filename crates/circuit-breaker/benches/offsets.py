#!/usr/bin/env python3
"""The interleaved checks of the `overhead` bench, run at 64 stack offsets.

On the benchmark machine one process's figures depend on where its stack starts. Linux starts the
main thread's stack at a random offset within a page; at some offsets a load on the call path
shares its low 12 address bits with a store to the stack just before it, and waits for it (4K
aliasing). The same binary measured about 7 ns per call in consecutive mode at most offsets and
12 to 16 ns at others, and a change to the bench's own code moves every offset.

This script builds the bench, then runs its interleaved checks with address randomisation off
(`setarch -R`) and `WSGUARD_BENCH_STACK_PAD` set to 0, 64, ..., 4032, which makes the checks run
that many bytes deeper in the stack, on the main thread and on the spawned threads alike. It
prints each figure's median and range over the offsets, so that a figure no longer depends on the
offset one process happened to get.

Usage: python3 crates/circuit-breaker/benches/offsets.py [offsets, default 64]
"""
import json
import os
import re
import statistics
import subprocess
import sys

OFFSETS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
STEP = 4096 // OFFSETS


def bench_binary():
    out = subprocess.run(
        ["cargo", "bench", "-p", "wsguard-circuit-breaker", "--bench", "overhead", "--no-run",
         "--message-format=json"],
        check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "overhead" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("offsets.py: the overhead bench binary was not built")


def run(binary, pad):
    env = dict(os.environ, WSGUARD_BENCH_STACK_PAD=str(pad))
    out = subprocess.run(["setarch", "-R", binary, "--bench", "^nothing$"], env=env, check=True,
                         capture_output=True, text=True).stdout
    figures = {}
    for line in out.splitlines():
        m = re.match(r"interleaved ([a-z ()]+), best of [^:]+: (.*)", line)
        if not m:
            continue
        check = m.group(1)
        for name, ns in re.findall(r"([a-z0-9][a-z0-9 ]*?) ([0-9.]+) ns", m.group(2)):
            figures[f"{check}: {name}"] = float(ns)
    return figures


def main():
    binary = bench_binary()
    runs = []
    for i in range(OFFSETS):
        figures = run(binary, i * STEP)
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
        runs.append(figures)
        print(f"offset {i * STEP:4}: consecutive {c('wsguard'):.2f} / {c('failsafe'):.2f} ns "
              f"({figures['consecutive: ratio of overheads']:.2f}), time window "
              f"{t('wsguard'):.2f} / {t('failsafe'):.2f} ns "
              f"({figures['time window: ratio of overheads']:.2f}), 2 threads / 1 "
              f"{figures['two threads: sharing one breaker / 1 thread']:.2f}", flush=True)
    print()
    print(f"Over {OFFSETS} stack offsets ({STEP} bytes apart):")
    print()
    print("| figure | median | lowest | highest |")
    print("|---|---:|---:|---:|")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")
    met = sum(r["consecutive: ratio of overheads"] <= 0.5 for r in runs)
    print()
    print(f"Consecutive ratio at most 0.5 at {met} of {OFFSETS} offsets.")


if __name__ == "__main__":
    main()
