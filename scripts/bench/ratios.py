#!/usr/bin/env python3
"""Ratios of the `overhead` bench, read from criterion's estimates of the last run.

Usage: python3 scripts/bench/ratios.py [CRITERION_DIR, default the workspace's target/criterion]
Overhead = mean time per call minus the bare service's, in the same group of the same run.
"""
import json
import os
import sys

WORKSPACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(WORKSPACE, "target", "criterion")


def mean(group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            estimates = json.load(f)
    except FileNotFoundError:
        return None
    # iter_custom samples linearly: criterion reports the slope (time per iteration).
    return (estimates.get("slope") or estimates["mean"])["point_estimate"]


print("| mode | threads | bare ns | wsguard ns | tower-resilience ns | failsafe ns | wsguard overhead / fastest peer overhead |")
print("|---|---|---|---|---|---|---|")
one = {}
for mode in ["consecutive", "count_window", "time_window"]:
    for threads in ["one_thread", "two_threads"]:
        group = f"{threads}_{mode}"
        bare = mean(group, "bare")
        ws = mean(group, "wsguard")
        tr = mean(group, "tower_resilience")
        fs = mean(group, "failsafe")
        if bare is None or ws is None:
            sys.exit(f"ratios.py: no estimates for {group} in {root}: run "
                     "`cargo bench -p wsguard-circuit-breaker --bench overhead` first")
        peers = [p - bare for p in (tr, fs) if p is not None]
        ratio = (ws - bare) / min(peers)
        one.setdefault(mode, {})[threads] = (ws, bare)
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
        print(f"| {mode} | {1 if threads == 'one_thread' else 2} | {fmt(bare)} | {fmt(ws)} | {fmt(tr)} | {fmt(fs)} | {ratio:.2f} |")
print()
print("| mode | wsguard shared, 2 threads / 1 thread | control: unshared breakers, 2 threads / 1 thread | bare, 2 threads / 1 thread |")
print("|---|---|---|---|")
for mode, t in one.items():
    (ws2, bare2), (ws1, bare1) = t["two_threads"], t["one_thread"]
    unshared = mean(f"two_threads_{mode}", "wsguard_unshared")
    control = "n/a" if unshared is None else f"{unshared / ws1:.2f}"
    print(f"| {mode} | {ws2 / ws1:.2f} | {control} | {bare2 / bare1:.2f} |")
d = mean("one_thread_consecutive", "wsguard_disabled")
if d is not None:
    print()
    print(f"Disabled breaker (same types, nothing admitted or recorded): {d:.1f} ns per call.")
