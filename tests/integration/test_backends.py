#!/usr/bin/env python3
"""Several backends per service (issue 5): failover with the first backend down (no client sees
an error; the dead one's failures counted up to max_fails, then it is skipped and
ferry_backend_up is 0); round-robin spread within +-1 over 300 connections to 3 backends;
least-connections prefers the idle backend; a backend marked down comes back after
fail_timeout; with every backend down they are all tried anyway; a connect that times out
(a loopback listener with a full backlog) moves on to the next backend in the same client
connection. workers = 1 so one process sees every connection."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import peers as P  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("backends")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
CTX = H.client_context(certs.ec_crt)

B = {n: Backend().start() for n in ("fo", "r1", "r2", "r3", "l1", "l2", "back", "hang2",
                                    "rd1", "rd2")}
DEAD = {n: H.free_port() for n in ("fo", "back", "all1", "all2", "rd")}  # nothing listens

# A backend that never completes a connect: listen(0) with its one queue slot taken, so the
# kernel drops further SYNs and ferry's connect hangs until connect_timeout.
hang_listener = socket.socket()
hang_listener.bind(("127.0.0.1", 0))
hang_listener.listen(0)
HANG_PORT = hang_listener.getsockname()[1]
hang_filler = socket.create_connection(("127.0.0.1", HANG_PORT), timeout=5)


def addr(port):
    return f"127.0.0.1:{port}"


def svc(name, connect, **extra):
    return H.service(name, H.free_port(), 0, certs.ec_crt, certs.ec_key,
                     connect=[addr(p) for p in connect], **extra)


ferry = H.Ferry(tmp, [
    svc("fo", [DEAD["fo"], B["fo"].port], balance="failover"),
    svc("rr", [B["r1"].port, B["r2"].port, B["r3"].port]),  # round-robin is the default
    svc("rrdead", [DEAD["rd"], B["rd1"].port, B["rd2"].port], balance="round-robin"),
    svc("lc", [B["l1"].port, B["l2"].port], balance="least-connections"),
    svc("back", [DEAD["back"], B["back"].port], balance="failover", max_fails=2,
        fail_timeout="1s"),
    svc("alldown", [DEAD["all1"], DEAD["all2"]], balance="failover", max_fails=1,
        fail_timeout="60s", connect_timeout="2s"),
    svc("hang", [HANG_PORT, B["hang2"].port], balance="failover", connect_timeout="1s"),
], workers=1).start()


def port(name):
    return ("127.0.0.1", ferry.port(name))


def normal_client_works():
    P.echo(port("rr"), CTX, b"still serving")


def failures(m, service, p):
    return H.mget(m, "ferry_backend_connect_failures_total", service=service, backend=addr(p))


def conns(m, service, p):
    return H.mget(m, "ferry_backend_connections_total", service=service, backend=addr(p))


def up(m, service, p):
    found = H.mfind(m, "ferry_backend_up", service=service, backend=addr(p))
    return found[0][1] if found else None


def closed_failed(m, service):
    return H.mget(m, "ferry_connections_closed_total", service=service,
                  reason="backend_connect_failed")


def settled(service):
    """Scrape once every connection of `service` has ended and been counted."""
    def ok(m):
        return (H.mget(m, "ferry_connections_active", service=service) == 0
                and H.mget(m, "ferry_connections_total", service=service)
                == H.mget(m, "ferry_connections_closed_total", service=service))
    return ferry.wait_metric(ok, timeout=10, what=f"{service}: every connection ended")


def client_fails(service):
    """A client whose connection ferry must end (no backend reachable). Returns seconds."""
    start = time.monotonic()
    try:
        with P.tls_connect(port(service), CTX) as s:
            try:
                s.sendall(b"ECHO\nx")
            except OSError:
                pass
            ferry.check(H.wait_eof(s, H.bound(10)) is not None,
                        f"{service}: the client's connection was not ended")
    except OSError:
        pass  # ended during the handshake
    return time.monotonic() - start


@S.test
def failover_first_backend_down():
    before = settled("fo")
    off = ferry.log_offset()
    acc0 = B["fo"].accepted
    clients = []
    for i in range(10):
        clients.append(P.client_addr(P.echo(port("fo"), CTX, b"fo %d" % i)["local"]))
    ferry.check(B["fo"].accepted - acc0 == 10,
                f"the live backend accepted {B['fo'].accepted - acc0} of 10")
    m = settled("fo")
    d = failures(m, "fo", DEAD["fo"]) - failures(before, "fo", DEAD["fo"])
    ferry.check(d == 3, f"ferry_backend_connect_failures_total for the dead backend moved by "
                        f"{d}: expected 3 (max_fails), then it is skipped for fail_timeout")
    d = failures(m, "fo", B["fo"].port) - failures(before, "fo", B["fo"].port)
    ferry.check(d == 0, f"failures counted for the live backend: {d}")
    d = conns(m, "fo", B["fo"].port) - conns(before, "fo", B["fo"].port)
    ferry.check(d == 10, f"ferry_backend_connections_total for the live backend moved by {d}")
    d = conns(m, "fo", DEAD["fo"]) - conns(before, "fo", DEAD["fo"])
    ferry.check(d == 0, f"ferry_backend_connections_total for the dead backend moved by {d}")
    u = up(m, "fo", DEAD["fo"])
    ferry.check(u == 0, f"ferry_backend_up for the dead backend is {u}, expected 0")
    u = up(m, "fo", B["fo"].port)
    ferry.check(u == 1, f"ferry_backend_up for the live backend is {u}, expected 1")
    d = closed_failed(m, "fo") - closed_failed(before, "fo")
    ferry.check(d == 0, f"{d} clients were closed with backend_connect_failed")
    for c in clients:
        P.wait_access(ferry, off, lambda a, c=c: a.get("client") == c
                      and a.get("service") == "fo",
                      what=f"the access line of client {c}")
    bad = [a for a in P.access_lines(ferry, off)
           if a.get("service") == "fo" and (a.get("backend") != addr(B["fo"].port)
                                            or a.get("end") != "done")]
    ferry.check(not bad, f"access lines with another backend= or end=: {bad[:3]}")
    normal_client_works()


@S.test
def round_robin_spread():
    before = settled("rr")
    acc0 = {n: B[n].accepted for n in ("r1", "r2", "r3")}
    for i in range(300):
        P.echo(port("rr"), CTX, b"%d" % i)
    got = {n: B[n].accepted - acc0[n] for n in acc0}
    ferry.check(sum(got.values()) == 300, f"backends accepted {got}, 300 in all expected")
    ferry.check(all(99 <= v <= 101 for v in got.values()),
                f"round-robin spread {got}: each should get 100 +-1")
    m = settled("rr")
    for n in acc0:
        d = conns(m, "rr", B[n].port) - conns(before, "rr", B[n].port)
        ferry.check(d == got[n], f"ferry_backend_connections_total{{backend={addr(B[n].port)}}} "
                                 f"moved by {d}, the backend accepted {got[n]}")


@S.test
def round_robin_skips_a_dead_backend():
    before = settled("rrdead")
    acc0 = {n: B[n].accepted for n in ("rd1", "rd2")}
    for i in range(30):
        P.echo(port("rrdead"), CTX, b"%d" % i)
    got = {n: B[n].accepted - acc0[n] for n in acc0}
    ferry.check(sum(got.values()) == 30, f"the live backends accepted {got} of 30")
    ferry.check(min(got.values()) >= 10, f"spread over the live backends: {got}")
    m = settled("rrdead")
    d = failures(m, "rrdead", DEAD["rd"]) - failures(before, "rrdead", DEAD["rd"])
    ferry.check(d == 3, f"failures of the dead backend moved by {d}, expected 3 (max_fails)")
    ferry.check(up(m, "rrdead", DEAD["rd"]) == 0, "ferry_backend_up of the dead backend is not 0")
    d = closed_failed(m, "rrdead") - closed_failed(before, "rrdead")
    ferry.check(d == 0, f"{d} clients were closed with backend_connect_failed")


def wait_active(service, n):
    ferry.wait_metric(lambda m: H.mget(m, "ferry_connections_active", service=service) == n,
                      timeout=10, what=f"ferry_connections_active{{service={service}}} == {n}")


@S.test
def least_connections_prefers_the_idle_backend():
    settled("lc")
    l1, l2 = B["l1"], B["l2"]
    a0 = (l1.accepted, l2.accepted)
    held = P.tls_connect(port("lc"), CTX)
    try:
        held.sendall(b"ECHO\nheld")
        ferry.check(H.recv_exact(held, 4) == b"held", "the held connection's echo failed")
        a1 = (l1.accepted, l2.accepted)
        ferry.check(a1[0] - a0[0] + a1[1] - a0[1] == 1, f"accepted moved {a0} -> {a1}")
        busy, idle = (l1, l2) if a1[0] > a0[0] else (l2, l1)
        wait_active("lc", 1)
        for i in range(6):
            before = busy.accepted
            P.echo(port("lc"), CTX, b"short %d" % i)
            ferry.check(busy.accepted == before,
                        f"short connection {i} went to the backend that has a connection open "
                        f"(least-connections should pick the idle one)")
            wait_active("lc", 1)
        ferry.check(idle.accepted - (a1[0] if idle is l1 else a1[1]) == 6,
                    "the idle backend did not get all 6 short connections")
        # a second held connection goes to the idle one too: then both have one
        held2 = P.tls_connect(port("lc"), CTX)
        try:
            before = busy.accepted
            held2.sendall(b"ECHO\nh2")
            ferry.check(H.recv_exact(held2, 2) == b"h2", "the second held echo failed")
            ferry.check(busy.accepted == before, "the second held connection went to the "
                                                 "busy backend")
        finally:
            held2.close()
    finally:
        held.close()
    wait_active("lc", 0)


@S.test
def backend_comes_back_after_fail_timeout():
    dead = DEAD["back"]
    before = settled("back")
    for i in range(2):  # max_fails = 2
        P.echo(port("back"), CTX, b"b%d" % i)
    marked_at = time.monotonic()
    m = ferry.scrape()
    d = failures(m, "back", dead) - failures(before, "back", dead)
    ferry.check(d == 2, f"failures of the down backend moved by {d}, expected 2")
    ferry.check(up(m, "back", dead) == 0, f"ferry_backend_up is {up(m, 'back', dead)}, "
                                          f"expected 0 after max_fails = 2 failures")
    with Backend(dead) as revived:
        # within fail_timeout (1s) it is skipped, although it listens again
        P.echo(port("back"), CTX, b"skipped")
        if time.monotonic() - marked_at < 0.8:
            ferry.check(revived.accepted == 0,
                        "the backend was tried again before fail_timeout had passed")
            d = failures(ferry.scrape(), "back", dead) - failures(before, "back", dead)
            ferry.check(d == 2, f"failures moved by {d}: it was tried within fail_timeout")
        else:
            print("  (slow machine: skipped the check within fail_timeout)")
        time.sleep(max(0.0, marked_at + 1.3 - time.monotonic()))
        c0 = conns(ferry.scrape(), "back", dead)
        P.echo(port("back"), CTX, b"back again")
        ferry.check(revived.accepted == 1,
                    f"after fail_timeout the first backend accepted {revived.accepted}, "
                    f"expected 1 (failover prefers it again)")
        m = ferry.wait_metric(lambda m: conns(m, "back", dead) > c0,
                              what="ferry_backend_connections_total of the revived backend")
        ferry.check(up(m, "back", dead) == 1,
                    f"ferry_backend_up of the revived backend is {up(m, 'back', dead)}")
        settled("back")
    normal_client_works()


@S.test
def all_backends_down_are_tried_anyway():
    d1, d2 = DEAD["all1"], DEAD["all2"]
    before = settled("alldown")
    client_fails("alldown")
    m = settled("alldown")
    for p in (d1, d2):
        d = failures(m, "alldown", p) - failures(before, "alldown", p)
        ferry.check(d == 1, f"failures of {addr(p)} moved by {d}, expected 1")
        ferry.check(up(m, "alldown", p) == 0, f"ferry_backend_up of {addr(p)} is not 0")
    d = closed_failed(m, "alldown") - closed_failed(before, "alldown")
    ferry.check(d == 1, f"closed{{reason=backend_connect_failed}} moved by {d}, expected 1")
    # both are marked down (max_fails = 1, fail_timeout = 60s): tried anyway, in order
    client_fails("alldown")
    m2 = settled("alldown")
    for p in (d1, d2):
        d = failures(m2, "alldown", p) - failures(m, "alldown", p)
        ferry.check(d == 1, f"with all backends down, {addr(p)} was tried {d} times, "
                            f"expected 1")
    with Backend(d2) as b:
        P.echo(port("alldown"), CTX, b"second one is back")
        ferry.check(b.accepted == 1, f"the revived second backend accepted {b.accepted}")
        m3 = ferry.wait_metric(lambda m: up(m, "alldown", d2) == 1,
                               what=f"ferry_backend_up of {addr(d2)} back to 1")
        d = failures(m3, "alldown", d1) - failures(m2, "alldown", d1)
        ferry.check(d == 1, f"the first (down) backend was tried {d} times before it, "
                            f"expected 1")
        settled("alldown")
    normal_client_works()


@S.test
def connect_timeout_moves_on():
    before = settled("hang")
    acc0 = B["hang2"].accepted
    start = time.monotonic()
    P.echo(port("hang"), CTX, b"after a timeout")
    took = time.monotonic() - start
    ferry.check(B["hang2"].accepted - acc0 == 1, "the second backend did not get the client")
    ferry.check(0.9 <= took <= 1 + H.bound(3),
                f"the client was served after {took:.2f}s; connect_timeout is 1s")
    m = settled("hang")
    d = failures(m, "hang", HANG_PORT) - failures(before, "hang", HANG_PORT)
    ferry.check(d == 1, f"failures of the blackhole backend moved by {d}, expected 1")
    d = closed_failed(m, "hang") - closed_failed(before, "hang")
    ferry.check(d == 0, f"{d} clients were closed with backend_connect_failed")
    normal_client_works()


@S.test
def backend_metrics_pass_promtool():
    """The new per-backend series (every service's backends, labelled as written) are valid
    exposition text, and every configured backend has its three series."""
    text = ferry.scrape_text()
    m = H.parse_metrics(text)
    for s in ferry.services:
        for b in s["connect"]:
            for name in ("ferry_backend_up", "ferry_backend_connections_total",
                         "ferry_backend_connect_failures_total"):
                ferry.check(H.mfind(m, name, service=s["name"], backend=b),
                            f"no {name}{{service={s['name']},backend={b}}} series")
    promtool = "/usr/bin/promtool"
    if not os.access(promtool, os.X_OK):
        print("  (promtool not installed: only the series were checked)")
        return
    r = H.run([promtool, "check", "metrics"], input=text.encode(), check=False, timeout=60)
    problems = (r.stdout + r.stderr).decode(errors="replace").strip()
    ferry.check(r.returncode == 0 and not problems,
                f"promtool check metrics: exit {r.returncode}\n{problems}")


@S.test
def sigterm_exits_0():
    ferry.stop()
    for b in B.values():
        b.stop()
    hang_filler.close()
    hang_listener.close()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_backends needs the real ferry (logs and metrics)")
        sys.exit(0)
    S.main()
