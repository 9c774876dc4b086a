#!/usr/bin/env python3
"""Throughput of the `echo` example with its stores in Redis against the same server with its
stores in memory, measured in one run, alternating.

Starts its own redis-server (no persistence, a free port), then for each round runs the release
`echo` twice, once per config (memory: the embedded default; redis: the dedup window and the
wsguard.v1 sessions in that Redis), and loads each with `loadgen --url`: 16 connections,
pipelined, plain WebSocket and then wsguard.v1 sessions. Prints each round, the medians, and the
ratio Redis / memory per load (issue target: >= 0.5x).

Build first: cargo build --release --example echo --example loadgen
Both servers run up to `connection.message_concurrency` messages of a connection at once
(third argument, default 32; replies still leave in order): a store across the network is paid in
round trips, and only calls in flight together share one, pipelined on the multiplexed connection.

Usage: python3 scripts/bench/stores.py [rounds, default 3] [messages per connection, default 2000]
       [message_concurrency, default 32]
"""
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORKSPACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(WORKSPACE, "target")),
                       "release", "examples")
LINE = re.compile(r"([\d.]+) replies/s\s+p50\s+(\d+) us\s+p99\s+(\d+) us")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"stores.py: {what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"stores.py: {what} did not listen on {port} within {timeout} s")


def flush_redis(port):
    """Empties Redis: loadgen's messages of one run can match those of an earlier one (same
    connection, sequence number and send time in microseconds), and a window kept from it would
    drop them as duplicates."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not s.recv(64).startswith(b"+OK"):
            sys.exit("stores.py: FLUSHALL failed")


def load(port, session, messages):
    args = [os.path.join(RELEASE, "loadgen"), "--url", f"ws://127.0.0.1:{port}/ws", "-c", "16",
            "-n", str(messages), "--mode", "pipelined"]
    if session:
        args.append("--session")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    m = LINE.search(out)
    if not m:
        sys.exit(f"stores.py: no figures in loadgen's output:\n{out}")
    return float(m.group(1)), int(m.group(3))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    for binary in ("echo", "loadgen"):
        if not os.path.exists(os.path.join(RELEASE, binary)):
            sys.exit(f"stores.py: build first: cargo build --release --example echo --example loadgen")
    redis_server = shutil.which("redis-server")
    if not redis_server:
        sys.exit("stores.py: redis-server not found (Debian package redis-server)")
    tmp = tempfile.mkdtemp(prefix="wsguard-stores-")
    redis_port = free_port()
    redis = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(redis_port, "redis-server", redis)
        url = f"redis://127.0.0.1:{redis_port}"
        configs = {}
        for name, backend in (("memory", "memory"), ("redis", "redis")):
            path = os.path.join(tmp, f"{name}.toml")
            with open(path, "w") as f:
                f.write(f"""
[connection]
message_concurrency = {concurrency}
[dedup]
fingerprint_key = "00112233445566778899aabbccddeeff"
[dedup.store]
backend = "{backend}"
[dedup.store.redis]
url = "{url}"
[session]
enabled = true
[session.store]
backend = "{backend}"
[session.store.redis]
url = "{url}"
""")
            configs[name] = path
        figures = {}
        print(f"16 connections x {messages} messages, pipelined, message_concurrency {concurrency}; "
              f"{rounds} rounds; "
              f"load average {os.getloadavg()[0]:.1f}")
        for r in range(rounds):
            for name in ("memory", "redis"):
                flush_redis(redis_port)
                port = free_port()
                echo = subprocess.Popen(
                    [os.path.join(RELEASE, "echo"), "--addr", f"127.0.0.1:{port}",
                     "--preset", "production", "--config", configs[name]],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env={**os.environ, "RUST_LOG": "warn"})
                try:
                    wait_port(port, "echo", echo)
                    for session in (False, True):
                        throughput, p99 = load(port, session, messages)
                        key = (name, "session" if session else "plain")
                        figures.setdefault(key, []).append((throughput, p99))
                        print(f"round {r + 1} {name:>6} {key[1]:>7}: {throughput:>9.0f} replies/s"
                              f"  p99 {p99} us")
                finally:
                    echo.terminate()
                    echo.wait(timeout=30)
        print()
        for load_kind in ("plain", "session"):
            med = {}
            for name in ("memory", "redis"):
                runs = figures[(name, load_kind)]
                med[name] = (statistics.median(t for t, _ in runs),
                             statistics.median(p for _, p in runs))
                print(f"{name:>6} {load_kind:>7}: median {med[name][0]:>9.0f} replies/s"
                      f"  p99 {med[name][1]} us")
            print(f"redis / memory, {load_kind}: throughput {med['redis'][0] / med['memory'][0]:.2f}x"
                  f"  p99 {med['redis'][1] / max(med['memory'][1], 1):.2f}x")
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
