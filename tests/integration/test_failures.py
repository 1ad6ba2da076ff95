#!/usr/bin/env python3
"""Failure paths (issue 2, point 7): each ends only its own connection, is logged at info with
the client address and reason, is counted once under its reason, and ferry keeps serving."""

import os
import random
import socket
import ssl
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # ssl.TLSVersion.TLSv1

REASONS = ("timeout", "not_tls", "protocol_version", "no_shared_cipher", "peer_closed", "other")
HANDSHAKE_TIMEOUT = 0.5
IDLE_TIMEOUT = 1.0

S = H.Suite("failures")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
DEAD_PORT = H.free_port()  # nothing listens here
# A backend that never completes a connect: listen(0) with its one queue slot taken, so the
# kernel drops further SYNs and ferry's connect hangs until connect_timeout.
hang_listener = H.socket.socket()
hang_listener.bind(("127.0.0.1", 0))
hang_listener.listen(0)
HANG_PORT = hang_listener.getsockname()[1]
hang_filler = H.socket.create_connection(("127.0.0.1", HANG_PORT), timeout=5)
ferry = H.Ferry(tmp, [
    H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key,
              handshake_timeout="500ms"),
    H.service("down", H.free_port(), DEAD_PORT, certs.ec_crt, certs.ec_key,
              connect_timeout="2s"),
    H.service("idle", H.free_port(), backend.port, certs.ec_crt, certs.ec_key,
              idle_timeout="1s"),
    H.service("hang", H.free_port(), HANG_PORT, certs.ec_crt, certs.ec_key,
              connect_timeout="1s"),
]).start()
PORT = ferry.port("web")
CTX = H.client_context(certs.ec_crt)


def failures(m, reason, service="web"):
    return H.mget(m, "ferry_handshake_failures_total", service=service, reason=reason)


def closed(m, reason, service="web"):
    return H.mget(m, "ferry_connections_closed_total", service=service, reason=reason)


def settled(m):
    """Every accepted connection has ended and been counted as closed."""
    for svc in ("web", "down", "idle", "hang"):
        total = H.mget(m, "ferry_connections_total", service=svc)
        ended = H.mget(m, "ferry_connections_closed_total", service=svc)
        if total != ended or H.mget(m, "ferry_connections_active", service=svc) != 0:
            return False
    return True


def settle():
    """Scrape once nothing is in flight (earlier tests' connections are fully accounted)."""
    return ferry.wait_metric(settled, timeout=10,
                             what="connections_total == closed_total and active == 0")


def normal_client_works(service="web"):
    with H.tls_connect(ferry.port(service), CTX, timeout=H.bound(10)) as s:
        s.sendall(b"ECHO\nstill serving")
        got = H.recv_exact(s, 13)
    ferry.check(got == b"still serving", f"a normal client on {service} got {got!r}")


def raw_client(payload=b"", close_after=False, wait=5):
    """Plain TCP client: send payload, then either close at once or wait for ferry to end the
    connection. Returns (client port, seconds until ferry ended it or None)."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=H.bound(10)) as s:
        port = s.getsockname()[1]
        if payload:
            s.sendall(payload)
        if close_after:
            return port, None
        took = H.wait_eof(s, H.bound(wait))
    ferry.check(took is not None, f"ferry did not end the connection within {H.bound(wait)}s")
    return port, took


def expect_handshake_failure(reason, client, detail=None):
    """Run client() (returns its local port); check log line, metrics, and normal service."""
    before = settle()
    off = ferry.log_offset()
    port = client()
    ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] handshake failed: service=web "
                   r"client=127\.0\.0\.1:%d reason=%s( \(.*\))?$" % (port, reason), start=off)
    ferry.wait_metric(lambda m: failures(m, reason) > failures(before, reason)
                      and closed(m, "handshake_failed") > closed(before, "handshake_failed"),
                      what=f"ferry_handshake_failures_total{{reason={reason}}} and "
                           f"ferry_connections_closed_total{{reason=handshake_failed}} to move")
    time.sleep(0.2)  # a double count would show up by now
    m = ferry.scrape()
    for r in REASONS:
        d = failures(m, r) - failures(before, r)
        ferry.check(d == (1 if r == reason else 0),
                    f"ferry_handshake_failures_total{{reason={r}}} moved by {d} "
                    f"(expected {1 if r == reason else 0})")
    d = closed(m, "handshake_failed") - closed(before, "handshake_failed")
    ferry.check(d == 1, f"ferry_connections_closed_total{{reason=handshake_failed}} moved by {d}")
    d = H.mget(m, "ferry_handshakes_total", service="web") - H.mget(
        before, "ferry_handshakes_total", service="web")
    ferry.check(d == 0, f"ferry_handshakes_total moved by {d} for a failed handshake")
    normal_client_works()


@S.test
def plain_http_is_not_tls():
    def client():
        port, _ = raw_client(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        return port
    expect_handshake_failure("not_tls", client)


@S.test
def random_bytes_are_not_tls():
    data = random.Random(20261122).randbytes(1024)
    assert data[0] != 0x16, "pick another seed: the first byte must not be a TLS handshake"

    def client():
        port, _ = raw_client(data)
        return port
    expect_handshake_failure("not_tls", client)


def tls_client_fails(ctx):
    """A Python TLS client whose handshake must fail; returns its local port."""
    raw = socket.create_connection(("127.0.0.1", PORT), timeout=H.bound(10))
    port = raw.getsockname()[1]
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        return port
    finally:
        raw.close()
    s.close()
    ferry.fail("the handshake succeeded but should have failed")


@S.test
def tls10_only_client_python():
    ctx = H.client_context(certs.ec_crt, min_version=ssl.TLSVersion.TLSv1,
                           max_version=ssl.TLSVersion.TLSv1, ciphers="DEFAULT@SECLEVEL=0")
    expect_handshake_failure("protocol_version", lambda: tls_client_fails(ctx))


@S.test
def tls11_only_client_python():
    ctx = H.client_context(certs.ec_crt, min_version=ssl.TLSVersion.TLSv1,
                           max_version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT@SECLEVEL=0")
    expect_handshake_failure("protocol_version", lambda: tls_client_fails(ctx))


@S.test
def tls10_only_client_openssl():
    holder = {}

    def client():
        # s_client does not print its local port: take it from ferry's log line.
        p = H.spawn(["openssl", "s_client", "-connect", f"127.0.0.1:{PORT}", "-tls1",
                     "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"],
                    stdin=H.subprocess.DEVNULL, stdout=H.subprocess.PIPE,
                    stderr=H.subprocess.STDOUT)
        try:
            out, _ = p.communicate(timeout=H.bound(20))
        except H.subprocess.TimeoutExpired:
            H.kill_proc(p)
            ferry.fail("openssl s_client -tls1 did not finish")
        H.kill_proc(p)
        holder["out"] = out.decode(errors="replace")
        ferry.check(p.returncode != 0, f"s_client -tls1 succeeded:\n{holder['out']}")
        m = ferry.wait_log(r"handshake failed: service=web client=127\.0\.0\.1:(\d+) "
                           r"reason=protocol_version", start=holder["off"])
        return int(m.group(1))
    holder["off"] = ferry.log_offset()
    expect_handshake_failure("protocol_version", client)


@S.test
def no_shared_cipher_rsa_kx():
    ctx = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA")
    expect_handshake_failure("no_shared_cipher", lambda: tls_client_fails(ctx))


@S.test
def no_shared_cipher_ecdhe_cbc():
    ctx = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2,
                           ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    expect_handshake_failure("no_shared_cipher", lambda: tls_client_fails(ctx))


@S.test
def silent_client_times_out():
    took = {}

    def client():
        port, t = raw_client(b"", wait=10)
        took["t"] = t
        return port
    expect_handshake_failure("timeout", client)
    t = took["t"]
    ferry.check(HANDSHAKE_TIMEOUT * 0.9 <= t <= HANDSHAKE_TIMEOUT + H.bound(2.0),
                f"a silent client was dropped after {t:.2f}s, handshake_timeout is 500ms")


@S.test
def slow_loris_clienthello_times_out():
    """Half a ClientHello, then silence: still the handshake timeout."""
    hello = client_hello()

    def client():
        port, _ = raw_client(hello[:len(hello) // 2], wait=10)
        return port
    expect_handshake_failure("timeout", client)


@S.test
def serves_others_while_a_client_is_silent():
    with socket.create_connection(("127.0.0.1", PORT), timeout=H.bound(10)):
        normal_client_works()
    settle()


def client_hello():
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = CTX.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[0] == 0x16 and len(hello) > 100, hello[:10]
    return hello


@S.test
def peer_closes_mid_clienthello():
    hello = client_hello()

    def client():
        port, _ = raw_client(hello[:len(hello) // 2], close_after=True)
        return port
    expect_handshake_failure("peer_closed", client)


def backend_fails(service, backend_port, why_regex, max_seconds):
    before = settle()
    off = ferry.log_offset()
    start = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", ferry.port(service)), timeout=H.bound(10))
    port = raw.getsockname()[1]
    try:
        try:
            s = CTX.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            s = None  # ferry may connect to the backend before the handshake
        if s is not None:
            try:
                s.sendall(b"ECHO\nhello")
            except OSError:
                pass
            ferry.check(H.wait_eof(s, H.bound(max_seconds + 5)) is not None,
                        f"{service}: the client's connection was not ended")
    finally:
        raw.close()
    took = time.monotonic() - start
    ferry.check(took < H.bound(max_seconds), f"{service}: the client waited {took:.1f}s")
    ferry.wait_log(r"^\S+ warn \[w\d+ c\d+\] backend connect failed: service=%s "
                   r"backend=127\.0\.0\.1:%d client=127\.0\.0\.1:%d: %s$"
                   % (service, backend_port, port, why_regex), start=off)
    m = ferry.wait_metric(
        lambda m: closed(m, "backend_connect_failed", service)
        > closed(before, "backend_connect_failed", service),
        what=f"ferry_connections_closed_total{{service={service},reason=backend_connect_failed}}")
    time.sleep(0.2)
    m = ferry.scrape()
    d = (H.mget(m, "ferry_backend_connect_failures_total", service=service)
         - H.mget(before, "ferry_backend_connect_failures_total", service=service))
    ferry.check(d == 1, f"ferry_backend_connect_failures_total moved by {d}, expected 1")
    d = closed(m, "backend_connect_failed", service) - closed(before, "backend_connect_failed",
                                                             service)
    ferry.check(d == 1, f"ferry_connections_closed_total{{reason=backend_connect_failed}} "
                        f"moved by {d}, expected 1")
    normal_client_works()
    return took


@S.test
def backend_down():
    backend_fails("down", DEAD_PORT, r"[Cc]onnection refused", 3)


@S.test
def backend_unreachable_hits_connect_timeout():
    took = backend_fails("hang", HANG_PORT, r".*(timed out|timeout).*", 1 + 3)
    ferry.check(took >= 0.9, f"the client was let go after {took:.2f}s, before the 1s "
                             f"connect_timeout")


@S.test
def idle_connection_is_closed():
    before = settle()
    off = ferry.log_offset()
    with H.tls_connect(ferry.port("idle"), CTX, timeout=H.bound(10)) as s:
        port = s.getsockname()[1]
        s.sendall(b"ECHO\nx")
        ferry.check(H.recv_exact(s, 1) == b"x", "echo before idling failed")
        took = H.wait_eof(s, H.bound(8))
    ferry.check(took is not None and IDLE_TIMEOUT * 0.9 <= took <= IDLE_TIMEOUT + H.bound(2.5),
                f"idle connection ended after {took}s, idle_timeout is 1s")
    ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=idle client=127\.0\.0\.1:%d .* "
                   r"end=idle_timeout$" % port, start=off)
    m = ferry.wait_metric(lambda m: closed(m, "idle_timeout", "idle")
                          > closed(before, "idle_timeout", "idle"),
                          what="ferry_connections_closed_total{reason=idle_timeout} to move")
    d = closed(m, "idle_timeout", "idle") - closed(before, "idle_timeout", "idle")
    ferry.check(d == 1, f"ferry_connections_closed_total{{reason=idle_timeout}} moved by {d}")
    normal_client_works("idle")


@S.test
def active_connection_is_not_idle():
    """Traffic every 0.3 s for 2.5 s (> idle_timeout): the connection stays up."""
    with H.tls_connect(ferry.port("idle"), CTX, timeout=H.bound(10)) as s:
        s.sendall(b"ECHO\n")
        for i in range(9):
            s.sendall(b"%d" % i)
            ferry.check(H.recv_exact(s, 1) == b"%d" % i,
                        f"echo {i} failed: the connection was closed while active")
            time.sleep(0.3)


def open_fds():
    return len(os.listdir(f"/proc/{ferry.proc.pid}/fd"))


@S.test
def no_descriptor_leak():
    """Many failed connections of every kind leave no descriptor behind."""
    base = open_fds()
    hello = client_hello()
    bad12 = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2,
                             ciphers="AES128-SHA")
    for i in range(20):
        with socket.create_connection(("127.0.0.1", PORT), timeout=H.bound(10)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            H.wait_eof(s, H.bound(5))
        raw_client(hello[:50], close_after=True)
        with socket.create_connection(("127.0.0.1", PORT), timeout=H.bound(10)):
            pass
        tls_client_fails(bad12)
        try:
            with H.tls_connect(ferry.port("down"), CTX, timeout=H.bound(10)) as s:
                H.wait_eof(s, H.bound(5))
        except (ssl.SSLError, OSError):
            pass
    deadline = time.monotonic() + H.bound(5)
    while open_fds() > base and time.monotonic() < deadline:
        time.sleep(0.1)
    ferry.check(open_fds() <= base, f"ferry had {base} descriptors, now {open_fds()}")
    normal_client_works()


def ended_with(reason, setup, service="web"):
    """setup(tls_conn) breaks an established connection; check end=reason in log and metric."""
    before = settle()
    off = ferry.log_offset()
    with H.MemTLS(ferry.port(service), CTX, timeout=H.bound(10)) as t:
        port = t.sock.getsockname()[1]
        t.sendall(b"ECHO\nx")
        ferry.check(t.recv(1) == b"x", "echo before breaking the connection failed")
        setup(t)
        t.sock.settimeout(H.bound(5))
        try:
            for _ in range(100):
                if not t.recv():
                    break
        except (ssl.SSLError, OSError):
            pass
    ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=%s client=127\.0\.0\.1:%d .* "
                   r"end=%s$" % (service, port, reason), start=off)
    m = ferry.wait_metric(lambda m: closed(m, reason, service) > closed(before, reason, service),
                          what=f"ferry_connections_closed_total{{reason={reason}}} to move")
    d = closed(m, reason, service) - closed(before, reason, service)
    ferry.check(d == 1, f"ferry_connections_closed_total{{reason={reason}}} moved by {d}")
    normal_client_works()


@S.test
def corrupt_record_from_client_is_client_error():
    def corrupt(t):
        # an application-data record that cannot decrypt: bad record MAC
        t.sock.sendall(b"\x17\x03\x03\x00\x20" + bytes(range(32)))
    ended_with("client_error", corrupt)


@S.test
def backend_reset_is_backend_error():
    before = settle()
    off = ferry.log_offset()
    start = time.monotonic()
    with H.tls_connect(PORT, CTX, timeout=H.bound(10)) as s:
        port = s.getsockname()[1]
        s.sendall(b"RESET\n")
        took = H.wait_eof(s, H.bound(5))
    ferry.check(took is not None, "the client's connection stayed open after a backend reset")
    ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .* "
                   r"end=backend_error$" % port, start=off)
    m = ferry.wait_metric(lambda m: closed(m, "backend_error") > closed(before, "backend_error"),
                          what="ferry_connections_closed_total{reason=backend_error} to move")
    d = closed(m, "backend_error") - closed(before, "backend_error")
    ferry.check(d == 1, f"ferry_connections_closed_total{{reason=backend_error}} moved by {d}")
    ferry.check(time.monotonic() - start < H.bound(3), "ending took too long")
    normal_client_works()


@S.test
def client_renegotiation_is_refused():
    """openssl s_client's "R" command asks a TLS 1.2 server to renegotiate: ferry refuses."""
    before = settle()
    p = H.spawn(["openssl", "s_client", "-connect", f"127.0.0.1:{PORT}", "-tls1_2",
                 "-servername", "localhost", "-CAfile", certs.ec_crt],
                stdin=H.subprocess.PIPE, stdout=H.subprocess.PIPE, stderr=H.subprocess.STDOUT)
    try:
        for line, pause in ((b"ECHO\n", 0.5), (b"R\n", 1.0), (b"after\n", 0.3)):
            p.stdin.write(line)
            p.stdin.flush()
            time.sleep(pause)
        p.stdin.close()
    except BrokenPipeError:
        pass  # s_client already quit: the renegotiation was refused
    try:
        out = p.communicate(timeout=H.bound(10))[0].decode(errors="replace")
    except H.subprocess.TimeoutExpired:
        out = ""
    H.kill_proc(p)
    ferry.check("RENEGOTIATING" in out, f"s_client did not try to renegotiate:\n{out[-1000:]}")
    ferry.check("no renegotiation" in out or "alert" in out,
                f"the renegotiation was not refused:\n{out[-1000:]}")
    m = settle()
    d = H.mget(m, "ferry_handshakes_total", service="web") - H.mget(
        before, "ferry_handshakes_total", service="web")
    ferry.check(d == 1, f"ferry_handshakes_total moved by {d}: expected 1 (no renegotiation)")
    normal_client_works()


@S.test
def handshake_failure_has_an_access_line():
    """The contract: one access line per finished connection, `end=handshake_failed` among the
    end reasons, `version=-` / `cipher=-` when unknown."""
    settle()
    off = ferry.log_offset()
    port, _ = raw_client(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    m = ferry.wait_log(r"^\S+ info (\[w\d+ c\d+\]) handshake failed: service=web "
                       r"client=127\.0\.0\.1:%d " % port, start=off)
    ferry.wait_log(r"^\S+ info %s access service=web client=127\.0\.0\.1:%d version=- "
                   r"cipher=- sni=- alpn=- resumed=no client_cert=- backend=- "
                   r"to_backend=0 to_client=0 handshake=- duration=\d+\.\d+s "
                   r"end=handshake_failed$" % (H.re.escape(m.group(1)), port),
                   start=off,
                   timeout=2)


@S.test
def one_access_line_per_connection():
    """Over everything this file did: access lines == accepted connections, each connection id
    once, and every end= value is one of the contract's end reasons."""
    m = settle()
    total = H.mget(m, "ferry_connections_total")
    text = ferry.stderr_text()
    access = H.re.findall(r"^\S+ info \[(w\d+ c\d+)\] access .* end=(\S+)$", text, H.re.M)
    ids = [a[0] for a in access]
    ends = {a[1] for a in access}
    allowed = {"done", "handshake_failed", "backend_connect_failed", "backend_error",
               "client_error", "idle_timeout", "shutdown"}
    ferry.check(ends <= allowed, f"end= values outside the contract: {ends - allowed}")
    ferry.check(len(ids) == len(set(ids)), "a connection has more than one access line")
    ferry.check(len(ids) == total, f"{int(total)} connections accepted, {len(ids)} access lines "
                                   f"(ends seen: {sorted(ends)})")


@S.test
def failures_logged_at_info_not_error():
    text = ferry.stderr_text()
    bad = [l for l in text.splitlines() if l.split()[1:2] == ["error"]]
    ferry.check(not bad, f"client faults were logged at error level: {bad[:3]}")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()
    hang_filler.close()
    hang_listener.close()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_failures needs the real ferry (logs and metrics)")
        sys.exit(0)
    S.main()
