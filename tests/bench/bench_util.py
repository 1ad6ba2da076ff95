#!/usr/bin/env python3
"""Helpers for tests/bench/compare_stunnel.sh (standard library only).

  bench_util.py backend PORT FILE   plaintext HTTP/1.1 server on 127.0.0.1:PORT: any GET returns FILE
                                    (GET /bytes/N returns its first N bytes) via sendfile(2);
                                    connections that close without a request are just closed.
  bench_util.py free-ports N        print N free loopback TCP ports
  bench_util.py cpu PID             print the process's user+system CPU seconds (all threads)
  bench_util.py report RESULTS ...  print the markdown report for the results file
"""
import asyncio
import os
import re
import socket
import statistics
import sys


def backend(port: int, path: str) -> None:
    size = os.path.getsize(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.match(rb"GET /bytes/(\d+) ", head)
            n = min(int(m.group(1)), size) if m else size
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % n)
            await writer.drain()
            if n:
                with open(path, "rb") as f:
                    await asyncio.get_running_loop().sendfile(writer.transport, f, 0, n)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096,
                                            reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_ports(n: int) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))


def cpu(pid: int) -> None:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    print(f"{(int(fields[11]) + int(fields[12])) / tick:.3f}")  # utime, stime


def report(results: str) -> None:
    # results: lines "PROXY TEST REP VALUE PROXY_CPU_SECONDS WALL_SECONDS"
    data: dict = {}
    for line in open(results):
        proxy, test, _rep, value, cpu_s, wall = line.split()
        v, c, w = float(value), float(cpu_s), float(wall)
        d = data.setdefault((test, proxy), {"v": [], "pct": [], "per": []})
        d["v"].append(v)
        d["pct"].append(100.0 * c / w)
        # proxy CPU per unit of work: seconds per GiB downloaded, microseconds per handshake
        d["per"].append(c if test == "download" else 1e6 * c / max(v * w, 1.0))
    tests = [("download", "1 GiB download, TLS 1.3 (MB/s)", lambda v: f"{v / 1e6:.0f}", "s/GiB"),
             ("handshake", "new TLS 1.3 handshakes (conn/s)", lambda v: f"{v:.0f}", "µs/handshake")]
    med = statistics.median
    print("| test | ferry | stunnel4 | ferry / stunnel4 | proxy CPU % (ferry / stunnel4) "
          "| proxy CPU per unit (ferry / stunnel4) | all runs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for key, title, fmt, unit in tests:
        f = data.get((key, "ferry"))
        s = data.get((key, "stunnel"))
        fm = med(f["v"]) if f else None
        sm = med(s["v"]) if s else None
        ratio = f"**{fm / sm:.2f}**" if fm and sm else "-"
        pct = " / ".join(f"{med(d['pct']):.0f}" if d else "-" for d in (f, s))
        per = " / ".join((f"{med(d['per']):.2f}" if key == "download" else f"{med(d['per']):.0f}")
                         if d else "-" for d in (f, s)) + f" {unit}"
        runs = "; ".join(f"{name}: " + ", ".join(fmt(v) for v in d["v"])
                         for name, d in (("ferry", f), ("stunnel4", s)) if d)
        print(f"| {title} | {fmt(fm) if fm else '-'} | {fmt(sm) if sm else '-'} | {ratio} "
              f"| {pct} | {per} | {runs} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "backend":
        backend(int(args[0]), args[1])
    elif cmd == "free-ports":
        free_ports(int(args[0]))
    elif cmd == "cpu":
        cpu(int(args[0]))
    elif cmd == "report":
        report(args[0])
    else:
        sys.exit(f"unknown command {cmd}")
