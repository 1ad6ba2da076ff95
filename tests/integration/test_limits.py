#!/usr/bin/env python3
"""Connection limits and access lists (issue 5): max_connections = 2 holds a third client's
handshake in the kernel backlog while two are open and completes it when one closes
(ferry_listener_paused_total), and connections that fail (not TLS, backend down) give their
slot back; allow / deny CIDRs checked on accept before any TLS work
(deny wins; a non-empty allow admits only its ranges; ferry_connections_rejected_total
{reason="denied"}); tcp_keepalive seen on ferry's sockets with `ss -tnoi`; backlog seen as the
listener's queue limit with `ss -ltn`."""

import os
import select
import shutil
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import peers as P  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("limits")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
CTX = H.client_context(certs.ec_crt)
backend = Backend().start()
DEAD_PORT = H.free_port()  # nothing listens here


def svc(name, **extra):
    return H.service(name, H.free_port(), backend.port, certs.ec_crt, certs.ec_key, **extra)


ferry = H.Ferry(tmp, [
    svc("web"),
    svc("lim", max_connections=2),
    svc("flood", max_connections=20),
    H.service("limdead", H.free_port(), DEAD_PORT, certs.ec_crt, certs.ec_key,
              max_connections=1),
    svc("deny", deny=["127.0.0.1/32"]),
    svc("allow", allow=["127.0.0.2/32"]),
    svc("both", allow=["127.0.0.0/8"], deny=["127.0.0.3/32", "10.0.0.0/8"]),
    svc("ka", tcp_keepalive="60s"),
    svc("bl", backlog=17),
], workers=1).start()


def addr(name):
    return ("127.0.0.1", ferry.port(name))


def normal_client_works(name="web"):
    P.echo(addr(name), CTX, b"still serving")


def rejected(m, service, reason="denied"):
    return H.mget(m, "ferry_connections_rejected_total", service=service, reason=reason)


def settled(service):
    def ok(m):
        return (H.mget(m, "ferry_connections_active", service=service) == 0
                and H.mget(m, "ferry_connections_total", service=service)
                == H.mget(m, "ferry_connections_closed_total", service=service))
    return ferry.wait_metric(ok, timeout=10, what=f"{service}: every connection ended")


class PendingHandshake:
    """A TLS client driven by hand: send the ClientHello, then see whether anything comes back
    (without blocking), and finish the handshake later."""

    def __init__(self, address):
        self.sock = P.sock_connect(address)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = CTX.wrap_bio(self.inc, self.out, server_hostname="localhost")
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.sock.sendall(self.out.read())

    def answered_within(self, seconds):
        r, _, _ = select.select([self.sock], [], [], seconds)
        return bool(r)

    def finish(self, timeout):
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = self.out.read()
                if data:
                    self.sock.sendall(data)
                b = self.sock.recv(1 << 16)
                if not b:
                    raise AssertionError("ferry closed the pending connection")
                self.inc.write(b)
        else:
            raise AssertionError(f"the handshake did not finish within {timeout}s")
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def echo(self, payload):
        self.obj.write(b"ECHO\n" + payload)
        self.sock.sendall(self.out.read())
        got = b""
        for _ in range(100):
            try:
                got += self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                b = self.sock.recv(1 << 16)
                if not b:
                    break
                self.inc.write(b)
                continue
            if len(got) >= len(payload):
                break
        return got

    def close(self):
        self.sock.close()


@S.test
def max_connections_pauses_the_listener():
    before = settled("lim")
    a = P.tls_connect(addr("lim"), CTX)
    b = P.tls_connect(addr("lim"), CTX)
    pending = None
    try:
        for s, tag in ((a, b"a"), (b, b"b")):
            s.sendall(b"ECHO\n" + tag)
            ferry.check(H.recv_exact(s, 1) == tag, "an echo below the limit failed")
        pending = PendingHandshake(addr("lim"))  # TCP connects: the kernel backlog holds it
        ferry.check(not pending.answered_within(H.bound(1.5)),
                    "the 3rd connection got an answer while max_connections = 2 were open")
        m = ferry.scrape()
        act = H.mget(m, "ferry_connections_active", service="lim")
        ferry.check(act == 2, f"ferry_connections_active{{service=lim}} is {act} at the limit")
        d = P.delta(before, m, "ferry_listener_paused_total", service="lim")
        ferry.check(d >= 1, f"ferry_listener_paused_total{{service=lim}} moved by {d}")
        # the open ones still work
        b.sendall(b"more")
        ferry.check(H.recv_exact(b, 4) == b"more", "an open connection stopped working")
        a.close()
        a = None
        start = time.monotonic()
        pending.finish(H.bound(5))
        took = time.monotonic() - start
        ferry.check(pending.echo(b"third") == b"third", "the 3rd connection's echo failed")
        ferry.check(took < H.bound(3), f"the 3rd handshake took {took:.2f}s after a slot freed")
    finally:
        for s in (a, b, pending):
            if s is not None:
                s.close()
    m = settled("lim")
    d = P.delta(before, m, "ferry_connections_total", service="lim")
    ferry.check(d == 3, f"ferry_connections_total{{service=lim}} moved by {d}, expected 3")
    d = P.delta(before, m, "ferry_handshakes_total", service="lim")
    ferry.check(d == 3, f"ferry_handshakes_total{{service=lim}} moved by {d}, expected 3")
    # below the limit again: a burst of sequential clients is served at once
    for i in range(5):
        P.echo(addr("lim"), CTX, b"after %d" % i)
    normal_client_works()


@S.test
def max_connections_many_waiting():
    """10 clients at once with max_connections = 2: all are served, never more than 2 active."""
    before = settled("lim")
    pend = [PendingHandshake(addr("lim")) for _ in range(10)]
    peak = 0
    try:
        done = 0
        deadline = time.monotonic() + H.bound(20)
        for p in pend:
            p.finish(max(0.1, deadline - time.monotonic()))
            ferry.check(p.echo(b"x") == b"x", "an echo failed")
            peak = max(peak, H.mget(ferry.scrape(), "ferry_connections_active", service="lim"))
            p.close()
            done += 1
    finally:
        for p in pend:
            p.close()
    ferry.check(done == 10, f"{done} of 10 served")
    ferry.check(peak <= 2, f"ferry_connections_active{{service=lim}} reached {peak}, limit 2")
    m = settled("lim")
    d = P.delta(before, m, "ferry_listener_paused_total", service="lim")
    ferry.check(d >= 1, f"ferry_listener_paused_total moved by {d}")


@S.test
def flood_beyond_max_connections():
    """400 clients at once against max_connections = 20: every one is served (they wait in the
    backlog, none is refused), ferry never holds more than 20, and afterwards its descriptors
    are back where they were."""
    import threading
    pid = ferry.proc.pid
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    before = settled("flood")
    results, lock = [], threading.Lock()
    peak = [0]
    stop = threading.Event()

    def client(i):
        try:
            got = P.echo(addr("flood"), CTX, b"flood %d" % i)
            ok = got == b"flood %d" % i if isinstance(got, bytes) else True
        except Exception as e:  # noqa: BLE001 - reported below
            ok = f"{type(e).__name__}: {e}"
        with lock:
            results.append(ok)

    def sampler():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], H.mget(ferry.scrape(), "ferry_connections_active",
                                              service="flood"))
            except OSError:
                pass
            time.sleep(0.02)

    watch = threading.Thread(target=sampler, daemon=True)
    watch.start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(400)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, start + H.bound(60) - time.monotonic()))
    stop.set()
    watch.join(2)
    bad = [r for r in results if r is not True]
    ferry.check(len(results) == 400 and not bad,
                f"{len(results)} of 400 clients finished; failures: {bad[:5]}")
    ferry.check(peak[0] <= 20, f"ferry_connections_active{{service=flood}} reached {peak[0]}")
    m = settled("flood")
    ferry.check(P.delta(before, m, "ferry_listener_paused_total", service="flood") >= 1,
                "the listener never paused")
    ferry.check(P.delta(before, m, "ferry_connections_total", service="flood") == 400,
                "ferry did not count 400 connections")
    deadline = time.monotonic() + H.bound(5)
    while len(os.listdir(f"/proc/{pid}/fd")) > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    fds_after = len(os.listdir(f"/proc/{pid}/fd"))
    ferry.check(fds_after <= fds_before, f"descriptors: {fds_before} before, {fds_after} after")
    P.echo(addr("web"), CTX, b"still serving")


@S.test
def failed_connections_free_their_slots():
    """Connections that end in a handshake failure or a backend connect failure give their
    slot back: with max_connections = 2 (1), many of them in a row never block the next."""
    for i in range(5):
        for _ in range(2):
            with P.sock_connect(addr("lim")) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: ferry ends it
                ferry.check(H.wait_eof(s, H.bound(5)) is not None,
                            f"round {i}: a not-TLS client was not closed (slots leaked?)")
        P.echo(addr("lim"), CTX, b"round %d" % i)
    for i in range(4):
        start = time.monotonic()
        try:
            with P.tls_connect(addr("limdead"), CTX) as s:
                s.sendall(b"ECHO\nx")
                ended = H.wait_eof(s, H.bound(5))
        except OSError:
            ended = 0.0
        ferry.check(ended is not None,
                    f"limdead client {i}: not ended within {H.bound(5)}s (a slot leaked "
                    f"by a backend connect failure?)")
        ferry.check(time.monotonic() - start < H.bound(5), f"limdead client {i} waited")
    settled("lim")
    settled("limdead")


def expect_denied(service, source=None):
    """A TCP client from `source` is closed at once, without any TLS bytes from ferry."""
    before = ferry.scrape()
    hs0 = H.mget(before, "ferry_handshake_failures_total", service=service)
    start = time.monotonic()
    with P.sock_connect(addr(service), source=source) as s:
        try:
            s.sendall(b"\x16\x03\x01\x00\x05hello")  # looks like TLS; must not matter
        except OSError:
            pass
        s.settimeout(H.bound(3))
        try:
            data = s.recv(4096)
        except socket.timeout:
            ferry.fail(f"{service}: a denied client ({source or '127.0.0.1'}) was not closed "
                       f"within {H.bound(3)}s")
        except OSError:
            data = b""  # reset
    took = time.monotonic() - start
    ferry.check(data == b"", f"{service}: ferry sent {data[:20]!r} to a denied client")
    ferry.check(took < H.bound(1), f"{service}: the denied client was closed after {took:.2f}s")
    m = ferry.wait_metric(lambda m: rejected(m, service) > rejected(before, service),
                          what=f"ferry_connections_rejected_total{{service={service},"
                               f"reason=denied}} to move")
    time.sleep(0.2)
    m = ferry.scrape()
    d = rejected(m, service) - rejected(before, service)
    ferry.check(d == 1, f"ferry_connections_rejected_total{{reason=denied}} moved by {d}")
    d = H.mget(m, "ferry_handshake_failures_total", service=service) - hs0
    ferry.check(d == 0, f"{service}: a denied connection counted {d} handshake failures "
                        f"(it must be closed before any TLS work)")


def expect_allowed(service, source=None):
    P.echo(addr(service), CTX, b"allowed", source=source)


@S.test
def deny_list():
    expect_denied("deny")
    expect_allowed("deny", source="127.0.0.2")
    normal_client_works()


@S.test
def allow_list():
    expect_denied("allow")
    expect_denied("allow", source="127.0.0.3")
    expect_allowed("allow", source="127.0.0.2")
    normal_client_works()


@S.test
def deny_wins_over_allow():
    expect_denied("both", source="127.0.0.3")
    expect_allowed("both")
    expect_allowed("both", source="127.0.0.4")
    m = ferry.scrape()
    labels = {ls.get("reason") for ls, _ in H.mfind(m, "ferry_connections_rejected_total")}
    ferry.check("denied" in labels, f"rejected reasons seen: {labels}")
    normal_client_works()


def ss_lines(args):
    if shutil.which("ss") is None:
        return None
    return H.run(["ss", *args], timeout=10).stdout.decode(errors="replace")


@S.test
def tcp_keepalive_on_accepted_sockets():
    probe = ss_lines(["-tnoi"])
    if probe is None:
        print("  (skipped: no ss)")
        return
    with P.tls_connect(addr("ka"), CTX) as ka, P.tls_connect(addr("web"), CTX) as plain:
        for s in (ka, plain):
            s.sendall(b"ECHO\nx")
            ferry.check(H.recv_exact(s, 1) == b"x", "echo failed")
        ka_port, plain_port = ka.getsockname()[1], plain.getsockname()[1]
        # ss shows one timer per socket: a retransmit timer ("on") hides the keepalive one
        # while data is unacknowledged, so look again until the sockets are quiet.
        deadline = time.monotonic() + H.bound(5)
        while True:
            # ferry's side of each connection: local port = the service port, peer = client
            out = ss_lines(["-tnoi", "state", "established", "(", "sport", "=",
                            f":{ferry.port('ka')}", "or", "sport", "=",
                            f":{ferry.port('web')}", ")"])
            blocks, cur = {}, None
            for line in out.splitlines():
                if line[:1].strip():  # a socket line (continuation lines start with a tab)
                    cur = line
                    blocks[cur] = ""
                elif cur is not None:
                    blocks[cur] += line
            ka_sock = [k + v for k, v in blocks.items() if f":{ka_port} " in k + " "]
            plain_sock = [k + v for k, v in blocks.items() if f":{plain_port} " in k + " "]
            ferry.check(len(ka_sock) == 1 and len(plain_sock) == 1,
                        f"ss did not show ferry's two sockets:\n{out}")
            busy = any("timer:(on" in x or "timer:(persist" in x for x in ka_sock + plain_sock)
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    m = H.re.search(r"timer:\(keepalive,(?:(\d+)min)?(\d+)(?:\.\d+)?(m?s)ec", ka_sock[0])
    ferry.check(m is not None, f"no keepalive timer on the tcp_keepalive socket:\n{ka_sock[0]}")
    secs = int(m.group(1) or 0) * 60 + int(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    ferry.check(40 <= secs <= 60, f"keepalive timer at {secs}s, tcp_keepalive is 60s")
    ferry.check("keepalive" not in plain_sock[0],
                f"keepalive on a service without tcp_keepalive:\n{plain_sock[0]}")


@S.test
def backlog_is_the_listen_queue_limit():
    out = ss_lines(["-ltn", "(", "sport", "=", f":{ferry.port('bl')}", "or", "sport", "=",
                    f":{ferry.port('web')}", ")"])
    if out is None:
        print("  (skipped: no ss)")
        return
    limits = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4:
            limits[int(parts[3].rsplit(":", 1)[1])] = int(parts[2])
    ferry.check(limits.get(ferry.port("bl")) == 17,
                f"listen queue limit of the backlog = 17 service: {limits}\n{out}")
    ferry.check(limits.get(ferry.port("web")) == 1024,
                f"listen queue limit of a service with the default backlog: {limits}\n{out}")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_limits needs the real ferry (logs and metrics)")
        sys.exit(0)
    S.main()
