#!/usr/bin/env python3
"""Sessions against plain connections, measured K times per cell, with the harness's own spread.

One `loadgen --compare --session --control` gives one ratio per figure (the median of its
rounds), and two such runs differ by more than the few hundredths a target is checked to. This
script runs it K times for each of the six cells of BENCHMARKS.md (ping-pong and pipelined, at 1,
16 and 64 connections) and prints, per cell, the median and range of the K throughput and p99
ratios, and of the control: plain measured again against plain in the same rounds. The control's
standard deviation is what one `loadgen --compare` can resolve; a missed target is given in that
unit and in standard errors of the K runs' median.

Usage: python3 scripts/bench/sessions.py [--profile NAME] [K, default 10] [CELL ...]
A cell is MODE:CONNECTIONS (pipelined:1); by default all six. The binaries are built with the
workspace's `release-lto` profile (fat LTO, one codegen unit), the one the target is checked with;
`--profile release` measures cargo's default release build instead.

Two builds against each other: the ratio drifts by a few hundredths from one hour to the next,
so a change is measured against the code before it in the same runs, alternating:
    python3 scripts/bench/sessions.py --builds OLD_DIR NEW_DIR [K] [CELL ...]
where each directory holds a copy of `loadgen` and `echo` from `target/PROFILE/examples`.
"""
import os
import re
import statistics
import subprocess
import sys

WORKSPACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
# Messages per connection: each run takes about the same time whatever the connections.
MESSAGES = {("ping-pong", 1): 20000, ("ping-pong", 16): 2000, ("ping-pong", 64): 500,
            ("pipelined", 1): 100000, ("pipelined", 16): 10000, ("pipelined", 64): 2500}
THROUGHPUT_TARGET, P99_TARGET = 0.85, 1.3


def loadgen(profile):
    subprocess.run(["cargo", "build", "--profile", profile, "--example", "echo",
                    "--example", "loadgen"], cwd=WORKSPACE, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(WORKSPACE, "target"))
    # cargo writes the `dev` profile's output to `debug`, any other profile's to its own name.
    return os.path.join(target, "debug" if profile == "dev" else profile, "examples", "loadgen")


def compare(binary, mode, connections):
    """One `loadgen --compare --session --control`: throughput, p99 and their controls."""
    out = subprocess.run(
        [binary, "--compare", "--session", "--control", "-c", str(connections),
         "-n", str(MESSAGES[(mode, connections)]), "--mode", mode, "--rounds", "5"],
        cwd=WORKSPACE, check=True, capture_output=True, text=True).stdout
    throughput = float(re.search(r"ratio session/plain ([\d.]+)", out).group(1))
    p99 = float(re.findall(r"ratio session/plain ([\d.]+)", out)[1])
    control = re.search(r"throughput ratio ([\d.]+), p99 ratio ([\d.]+)", out)
    return throughput, p99, float(control.group(1)), float(control.group(2))


def spread(values):
    values = sorted(values)
    return f"{statistics.median(values):.3f} ({values[0]:.2f} to {values[-1]:.2f})"


def builds(old, new, args):
    """Each cell's throughput and p99 ratios from two builds, K runs each, alternating."""
    k = int(args[0]) if args else 10
    cells = [(c.split(":")[0], int(c.split(":")[1])) for c in args[1:]] or list(MESSAGES)
    binaries = [os.path.join(d, "loadgen") for d in (old, new)]
    print(f"{k} alternations of `loadgen --compare --session --rounds 5` per cell, {old} then {new}")
    print("| cell | throughput session/plain, old | new | new - old, median of pairs |"
          " p99 session/plain, old | new |")
    print("|---|---|---|---|---|---|")
    for mode, connections in cells:
        pairs = [tuple(compare(b, mode, connections)[:2] for b in binaries) for _ in range(k)]
        old_t, old_p = [o[0] for o, _ in pairs], [o[1] for o, _ in pairs]
        new_t, new_p = [n[0] for _, n in pairs], [n[1] for _, n in pairs]
        gain = statistics.median(n[0] - o[0] for o, n in pairs)
        print(f"| {mode} {connections} | {spread(old_t)} | {spread(new_t)} | {gain:+.3f} |"
              f" {spread(old_p)} | {spread(new_p)} |", flush=True)


def main():
    if sys.argv[1:2] == ["--builds"]:
        return builds(sys.argv[2], sys.argv[3], sys.argv[4:])
    args, profile = sys.argv[1:], "release-lto"
    if args[:1] == ["--profile"]:
        profile, args = args[1], args[2:]
    k = int(args[0]) if args else 10
    cells = [(c.split(":")[0], int(c.split(":")[1])) for c in args[1:]] or list(MESSAGES)
    binary = loadgen(profile)
    print(f"{k} runs of `loadgen --compare --session --control --rounds 5` per cell,"
          f" profile {profile}")
    print("| cell | throughput session/plain | control, sd | p99 session/plain | control, sd |"
          " throughput target 0.85 |")
    print("|---|---|---|---|---|---|")
    for mode, connections in cells:
        runs = [compare(binary, mode, connections) for _ in range(k)]
        t, p, ct, cp = (list(column) for column in zip(*runs))
        resolution = statistics.stdev(ct)
        # The standard error of a median of K normal draws: 1.25 sd / sqrt(K).
        error = 1.2533 * statistics.stdev(t) / len(t) ** 0.5
        miss = THROUGHPUT_TARGET - statistics.median(t)
        status = "met" if miss <= 0 else (
            f"missed by {miss:.3f}: {miss / resolution:.1f} sd of one run,"
            f" {miss / error:.1f} standard errors of this median")
        print(f"| {mode} {connections} | {spread(t)} | {spread(ct)}, {resolution:.3f} |"
              f" {spread(p)} | {spread(cp)}, {statistics.stdev(cp):.3f} | {status} |", flush=True)
    print(f"p99 target: session/plain at most {P99_TARGET}")


if __name__ == "__main__":
    main()
