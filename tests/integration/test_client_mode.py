#!/usr/bin/env python3
"""Client mode (issue 3): ferry accepts plaintext and originates verified TLS upstream.

Interop of ferry's client side against openssl s_server, gnutls-serv, a Python ssl server and
ferry's own server mode (a ferry -> ferry tunnel moving 256 MiB each way, checked by sha256);
the negative matrix (untrusted CA, hostname and IP mismatch, expired: the plaintext client is
closed promptly, the log line carries OpenSSL's reason, the reason label moves); verify = false;
and upstream session resumption counted on both ends."""

import hashlib
import os
import re
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend, source_chunks, source_digest  # noqa: E402

MiB = 1 << 20
# 256 MiB each way through the tunnel; sanitizer builds are ~3x slower.
TUNNEL_BYTES = (256 if H.SLOWDOWN <= 1 else 64) * MiB
VERIFY_REASONS = ("unknown_ca", "hostname_mismatch", "cert_expired", "bad_certificate")

S = H.Suite("client_mode")
tmp = H.make_temp_dir()
pki = H.Pki(tmp, "ca")
rogue = H.Pki(tmp, "rogue")  # a CA ferry does not trust
NAMES = ["DNS:localhost", "IP:127.0.0.1"]
good_crt, good_key = pki.issue("localhost", sans=NAMES)
dns_only_crt, dns_only_key = pki.issue("dns-only", subject="/CN=localhost",
                                       sans=["DNS:localhost"])
wrong_crt, wrong_key = pki.issue("wrong.test")
expired_crt, expired_key = pki.issue("expired", subject="/CN=localhost", sans=NAMES,
                                     start="20200101000000Z", end="20200201000000Z")
rogue_crt, rogue_key = rogue.issue("localhost", sans=NAMES)
client_crt, client_key = pki.issue("ferry-client", subject="/O=Acme/CN=ferry-client",
                                   sans=["URI:spiffe://prod/ferry"])
# right names and CA, but only good for TLS clients: verification fails with another reason
purpose_crt, purpose_key = pki.issue("client-purpose", subject="/CN=localhost", sans=NAMES,
                                     extensions=["extendedKeyUsage=clientAuth"])

# `ca` may be a directory in `openssl rehash` form
CA_DIR = os.path.join(tmp, "ca-dir")
os.mkdir(CA_DIR)
H.shutil.copy(pki.ca_crt, os.path.join(CA_DIR, "ferry-test-ca.pem"))
H.run(["openssl", "rehash", CA_DIR])

backend = Backend().start()

# ferry in server mode: the far end of the tunnel.
ferry_srv = H.Ferry(tmp, [
    H.service("up", H.free_port(), backend.port, good_crt, good_key),
    H.service("up_mtls", H.free_port(), backend.port, good_crt, good_key,
              tls={"client_ca": pki.ca_crt, "allow_subjects": ["CN=ferry-client,O=Acme"]}),
], name="ferry-server").start()

P = {n: H.free_port() for n in ("py", "ossl", "ossl12", "gnutls", "gnutls12", "untrusted",
                                "mismatch", "ip_mismatch", "expired", "purpose")}
CA = pki.ca_crt
CLIENT_SERVICES = [
    H.client_service("py", H.free_port(), P["py"], server_name="localhost", ca=CA,
                     tls={"alpn": ["h2", "http/1.1"]}),
    H.client_service("py_ip", H.free_port(), P["py"], ca=CA),  # IP literal: IP SAN, no SNI
    H.client_service("py_mtls", H.free_port(), P["py"], server_name="localhost", ca=CA,
                     cert=client_crt, key=client_key),
    # no `ca`: the system trust store, which does not know the test CA
    H.client_service("sysstore", H.free_port(), P["py"], server_name="localhost"),
    H.client_service("ossl", H.free_port(), P["ossl"], server_name="localhost", ca=CA),
    H.client_service("ossl12", H.free_port(), P["ossl12"], server_name="localhost", ca=CA),
    H.client_service("gnutls", H.free_port(), P["gnutls"], server_name="localhost", ca=CA),
    H.client_service("gnutls12", H.free_port(), P["gnutls12"], server_name="localhost", ca=CA),
    H.client_service("tunnel", H.free_port(), ferry_srv.port("up"), server_name="localhost",
                     ca=CA),
    H.client_service("tunnel_mtls", H.free_port(), ferry_srv.port("up_mtls"),
                     server_name="localhost", ca=CA, cert=client_crt, key=client_key),
    H.client_service("tunnel_nocert", H.free_port(), ferry_srv.port("up_mtls"),
                     server_name="localhost", ca=CA),
    H.client_service("untrusted", H.free_port(), P["untrusted"], server_name="localhost",
                     ca=CA),
    H.client_service("mismatch", H.free_port(), P["mismatch"], server_name="localhost", ca=CA),
    H.client_service("ip_mismatch", H.free_port(), P["ip_mismatch"], ca=CA),
    H.client_service("expired", H.free_port(), P["expired"], server_name="localhost", ca=CA),
    H.client_service("purpose", H.free_port(), P["purpose"], server_name="localhost", ca=CA),
    H.client_service("noverify", H.free_port(), P["untrusted"], server_name="localhost",
                     verify=False),
]
NOVERIFY_INDEX = [s["name"] for s in CLIENT_SERVICES].index("noverify")
ferry = H.Ferry(tmp, CLIENT_SERVICES, name="ferry-client").start()


# --------------------------------------------------------------------------------------------
# peers


class PyTlsServer:
    """A Python ssl echo server on 127.0.0.1:port (threads). Records, per handshake, the SNI
    (None when none was sent), version, ALPN and the client certificate; failed handshakes in
    .errors."""

    def __init__(self, port, cert, key, client_ca=None, alpn=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if alpn:
            ctx.set_alpn_protocols(alpn)

        def on_sni(sslsock, name, _ctx):
            sslsock.ferry_sni = name
        ctx.sni_callback = on_sni
        self.ctx = ctx
        self.sessions = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.lsock.settimeout(0.1)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(H.bound(30))
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.errors.append(e)
            raw.close()
            return
        with s:
            info = {"sni": getattr(s, "ferry_sni", None), "version": s.version(),
                    "alpn": s.selected_alpn_protocol(), "peer": s.getpeercert()}
            with self.lock:
                self.sessions.append(info)
            try:
                while True:
                    b = s.recv(1 << 16)
                    if not b:
                        break
                    s.sendall(b)
            except (ssl.SSLError, OSError):
                pass

    def close(self):
        self.stopping.set()
        self.lsock.close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_tool(argv, ready_text, what):
    """Start a server tool (stdout+stderr to a file), wait for `ready_text` in its output."""
    out_path = os.path.join(tmp, f"{what}.out")
    with open(out_path, "wb") as out:
        p = H.spawn(argv, stdin=H.subprocess.PIPE, stdout=out, stderr=H.subprocess.STDOUT)
    deadline = time.monotonic() + H.bound(10)
    while True:
        text = open(out_path, "rb").read().decode(errors="replace")
        if ready_text in text:
            return p, out_path
        if p.poll() is not None or time.monotonic() > deadline:
            H.kill_proc(p)
            raise AssertionError(f"{what} did not start ({ready_text!r} not seen):\n{text}")
        time.sleep(0.05)


def plain(service):
    return socket.create_connection(("127.0.0.1", ferry.port(service)), timeout=H.bound(20))


def echo_roundtrip(service, lines):
    """Send each line through the plaintext side; return what came back for each."""
    got = []
    with plain(service) as s:
        for line in lines:
            s.sendall(line)
            got.append(H.recv_exact(s, len(line)))
    return got


def handshakes(m, **labels):
    return H.mget(m, "ferry_handshakes_total", **labels)


def verify_failures(m, service, reason):
    return H.mget(m, "ferry_handshake_failures_total", service=service, reason=reason)


# --------------------------------------------------------------------------------------------
# interop


@S.test
def python_server_sni_alpn_and_verified_name():
    before = ferry.scrape()
    with PyTlsServer(P["py"], good_crt, good_key, alpn=["http/1.1"]) as srv:
        lines = [b"hello python\n", os.urandom(200_000)]
        got = echo_roundtrip("py", lines)
        ferry.check(got == lines, "python echo through ferry client mode: bytes differ")
        ferry.check(len(srv.sessions) == 1, f"python server saw {srv.sessions} {srv.errors}")
        info = srv.sessions[0]
        ferry.check(info["sni"] == "localhost", f"SNI sent upstream: {info['sni']!r}, "
                                                f"expected server_name 'localhost'")
        ferry.check(info["version"] == "TLSv1.3", f"version {info['version']}")
        ferry.check(info["alpn"] == "http/1.1", f"ALPN upstream: {info['alpn']!r} (offered "
                                                f"h2, http/1.1; server takes http/1.1)")
        ferry.check(info["peer"] is None, "ferry presented a client certificate unasked")
    m = ferry.wait_metric(lambda m: handshakes(m, service="py", version="TLSv1.3")
                          > handshakes(before, service="py", version="TLSv1.3"),
                          what="ferry_handshakes_total{service=py,version=TLSv1.3}")
    n = sum(len(x) for x in lines)
    ferry.wait_metric(
        lambda m: H.mget(m, "ferry_bytes_total", service="py", direction="to_backend")
        - H.mget(before, "ferry_bytes_total", service="py", direction="to_backend") >= n
        and H.mget(m, "ferry_bytes_total", service="py", direction="to_client")
        - H.mget(before, "ferry_bytes_total", service="py", direction="to_client") >= n,
        what="ferry_bytes_total{service=py} to_backend/to_client to move by the echoed bytes")


@S.test
def ip_literal_checks_ip_san_and_sends_no_sni():
    with PyTlsServer(P["py"], good_crt, good_key) as srv:
        got = echo_roundtrip("py_ip", [b"by IP\n"])
        ferry.check(got == [b"by IP\n"], f"echo via IP literal: {got!r}")
        ferry.check(len(srv.sessions) == 1, f"{srv.sessions} {srv.errors}")
        ferry.check(srv.sessions[0]["sni"] is None,
                    f"SNI {srv.sessions[0]['sni']!r} sent for an IP literal (expected none)")


@S.test
def client_certificate_presented_upstream():
    with PyTlsServer(P["py"], good_crt, good_key, client_ca=CA) as srv:
        got = echo_roundtrip("py_mtls", [b"mtls\n"])
        ferry.check(got == [b"mtls\n"], f"echo with client cert: {got!r}")
        peer = srv.sessions[0]["peer"] if srv.sessions else None
        ferry.check(peer is not None and ((("commonName", "ferry-client"),) in peer["subject"]),
                    f"upstream saw client certificate {peer!r}")


@S.test
def ca_directory():
    """`ca` may be a directory (own ferry: a failure here must not hide the other tests)."""
    d = os.path.join(tmp, "cadir-ferry")
    os.mkdir(d)
    f = H.Ferry(d, [H.client_service("py_cadir", H.free_port(), P["py"],
                                     server_name="localhost", ca=CA_DIR)], name="ferry-cadir")
    f.start()
    try:
        with PyTlsServer(P["py"], good_crt, good_key) as srv:
            with socket.create_connection(("127.0.0.1", f.port()), timeout=H.bound(20)) as s:
                s.sendall(b"ca dir\n")
                got = H.recv_exact(s, 7)
            f.check(got == b"ca dir\n", f"ca = directory: echo {got!r}, {srv.errors}")
    finally:
        f.stop()


def openssl_s_server(port, extra, what):
    return start_tool(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", good_crt,
                       "-key", good_key, "-rev", "-naccept", "1", *extra], "ACCEPT", what)


@S.test
def openssl_s_server_tls13_and_tls12():
    for svc, extra, version in (("ossl", [], "TLSv1.3"), ("ossl12", ["-tls1_2"], "TLSv1.2")):
        p, out_path = openssl_s_server(P[svc], extra, f"s_server-{svc}")
        try:
            with plain(svc) as s:
                s.sendall(b"hello ferry\n")
                got = H.recv_exact(s, 12)
                ferry.check(got == b"yrref olleh\n", f"s_server -rev {extra} answered {got!r}")
                s.sendall(b"CLOSE\n")  # s_server closes the TLS connection ...
                took = H.wait_eof(s, H.bound(5))  # ... and ferry the plaintext one
                ferry.check(took is not None, "plaintext client not closed after upstream close")
            try:
                p.wait(timeout=H.bound(10))
            except H.subprocess.TimeoutExpired:
                pass
            text = open(out_path, "rb").read().decode(errors="replace")
            ferry.check(f"Protocol version: {version}" in text,
                        f"s_server {extra}: expected {version}:\n{text[-1500:]}")
        finally:
            H.kill_proc(p)


@S.test
def gnutls_serv_echo_tls13_and_tls12():
    for svc, prio, version in (("gnutls", [], "TLS1.3"),
                               ("gnutls12", ["--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2"],
                                "TLS1.2")):
        p, out_path = start_tool(["gnutls-serv", "--echo", "-p", str(P[svc]), *prio,
                                  "--x509certfile", good_crt, "--x509keyfile", good_key],
                                 "Echo Server listening on IPv4", f"gnutls-serv-{svc}")
        try:
            lines = [b"hello gnutls\n", b"a" * 3000 + b"\n", b"line three\n"]
            got = echo_roundtrip(svc, lines)
            ferry.check(got == lines, f"gnutls-serv {prio} echo through ferry: "
                                      f"{[g[:30] for g in got]}")
            text = open(out_path, "rb").read().decode(errors="replace")
            ferry.check(f"({version}" in text,
                        f"gnutls-serv {prio} did not report {version}:\n{text[-1500:]}")
        finally:
            H.kill_proc(p)


def tunnel_metric_moved(f, service, before, to_backend, to_client):
    def ok(m):
        return (H.mget(m, "ferry_bytes_total", service=service, direction="to_backend")
                - H.mget(before, "ferry_bytes_total", service=service, direction="to_backend")
                >= to_backend and
                H.mget(m, "ferry_bytes_total", service=service, direction="to_client")
                - H.mget(before, "ferry_bytes_total", service=service, direction="to_client")
                >= to_client)
    f.wait_metric(ok, what=f"ferry_bytes_total{{service={service}}} to move by "
                           f"to_backend>={to_backend} to_client>={to_client}")


@S.test
def ferry_tunnel_upload():
    """plaintext -> ferry(client) -> TLS -> ferry(server) -> SINK: sha256 of TUNNEL_BYTES."""
    before_c, before_s = ferry.scrape(), ferry_srv.scrape()
    n = TUNNEL_BYTES
    expect = hashlib.sha256()
    t0 = time.monotonic()
    with plain("tunnel") as s:
        s.settimeout(H.bound(120))
        s.sendall(b"SINK\n")
        for c in source_chunks(n, b"tunnel-up"):
            expect.update(c)
            s.sendall(c)
        s.shutdown(socket.SHUT_WR)  # the backend answers at EOF: half-close through the tunnel
        reply = H.recv_all(s, limit=1000)
    took = time.monotonic() - t0
    ferry.check(reply == expect.hexdigest().encode() + b"\n",
                f"tunnel upload of {n} bytes: backend saw {reply!r}, sent {expect.hexdigest()}")
    print(f"  tunnel upload {n >> 20} MiB in {took:.1f}s", flush=True)
    tunnel_metric_moved(ferry, "tunnel", before_c, n + 5, 65)
    tunnel_metric_moved(ferry_srv, "up", before_s, n + 5, 65)


@S.test
def ferry_tunnel_download():
    before_c, before_s = ferry.scrape(), ferry_srv.scrape()
    n = TUNNEL_BYTES
    t0 = time.monotonic()
    with plain("tunnel") as s:
        s.settimeout(H.bound(120))
        s.sendall(b"SOURCE %d\n" % n)
        h = hashlib.sha256()
        got = H.recv_all(s, hasher=h)
    took = time.monotonic() - t0
    ferry.check(got == n and h.hexdigest() == source_digest(n),
                f"tunnel download: {got} bytes, sha256 {h.hexdigest()}, expected {n} bytes")
    print(f"  tunnel download {n >> 20} MiB in {took:.1f}s", flush=True)
    tunnel_metric_moved(ferry, "tunnel", before_c, len(b"SOURCE %d\n" % n), n)
    tunnel_metric_moved(ferry_srv, "up", before_s, len(b"SOURCE %d\n" % n), n)


@S.test
def ferry_tunnel_with_client_certificate():
    """ferry(client) presents cert/key to a ferry(server) with client_ca + allow_subjects."""
    with plain("tunnel_mtls") as s:
        s.sendall(b"SOURCE 100000\n")
        h = hashlib.sha256()
        got = H.recv_all(s, hasher=h)
    ferry.check(got == 100000 and h.hexdigest() == source_digest(100000),
                f"mTLS tunnel: {got} bytes")


@S.test
def ferry_tunnel_without_client_certificate_is_refused():
    """No cert for a ferry server that requires one: the server says no_client_cert, opens no
    backend connection, and the plaintext client is closed."""
    before = ferry_srv.scrape()
    accepted = backend.accepted
    off = ferry_srv.log_offset()
    try:
        s = plain("tunnel_nocert")
    except ConnectionResetError:
        # On a loaded machine the refusal can come back before connect() returns: the reset
        # then surfaces there. Closed either way.
        took = 0.0
    else:
        with s:
            try:
                s.sendall(b"ECHO\nnever\n")
            except OSError:
                pass
            took = H.wait_eof(s, H.bound(5))
    ferry.check(took is not None, "plaintext client not closed after the upstream refused us")
    ferry_srv.wait_log(r"handshake failed: service=up_mtls client=127\.0\.0\.1:\d+ "
                       r"reason=no_client_cert \(", start=off)
    m = ferry_srv.wait_metric(
        lambda m: verify_failures(m, "up_mtls", "no_client_cert")
        > verify_failures(before, "up_mtls", "no_client_cert"),
        what="ferry_handshake_failures_total{service=up_mtls,reason=no_client_cert}")
    time.sleep(0.2)
    ferry_srv.check(backend.accepted == accepted, "the backend saw a connection for a client "
                                                  "without certificate")


@S.test
def resumption_100_connections_both_ends():
    before_c, before_s = ferry.scrape(), ferry_srv.scrape()
    for i in range(100):
        with plain("tunnel") as s:
            s.sendall(b"ECHO\n%d\n" % i)
            want = b"%d\n" % i
            got = H.recv_exact(s, len(want))
            ferry.check(got == want, f"connection {i}: echo {got!r}")

    def moved(f, m, before, svc):
        return (H.mget(m, "ferry_sessions_resumed_total", service=svc)
                - H.mget(before, "ferry_sessions_resumed_total", service=svc))
    # Every connection's handshake is counted by the time its echo came back.
    mc = ferry.wait_metric(lambda m: handshakes(m, service="tunnel")
                           - handshakes(before_c, service="tunnel") >= 100,
                           what="100 client-side handshakes counted")
    ms = ferry_srv.wait_metric(lambda m: handshakes(m, service="up")
                               - handshakes(before_s, service="up") >= 100,
                               what="100 server-side handshakes counted")
    dc, ds = moved(ferry, mc, before_c, "tunnel"), moved(ferry_srv, ms, before_s, "up")
    ferry.check(dc >= 99 and ds >= 99,
                f"of 100 sequential connections, resumed: client side {dc}, server side {ds} "
                f"(ferry_sessions_resumed_total; expected >= 99 on both)")


# --------------------------------------------------------------------------------------------
# negative matrix


def expect_upstream_failure(service, upstream_port, reason, words):
    """The upstream's certificate fails verification: the plaintext client is closed promptly
    without data, the log line has the reason and OpenSSL's words, the label moves by one."""
    before = ferry.scrape()
    off = ferry.log_offset()
    start = time.monotonic()
    data = b""
    with plain(service) as s:
        port = s.getsockname()[1]
        try:
            s.sendall(b"ECHO\nnever\n")
        except OSError:
            pass
        s.settimeout(H.bound(5))
        try:
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                data += b
        except socket.timeout:
            ferry.fail(f"{service}: the plaintext client was not closed within "
                       f"{H.bound(5)}s of a failed upstream verification")
        except OSError:
            pass  # a reset ends it too
    took = time.monotonic() - start
    ferry.check(took < H.bound(3), f"{service}: plaintext client closed only after {took:.1f}s")
    ferry.check(data == b"", f"{service}: the plaintext client received {data[:100]!r}")
    m = ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] handshake failed: service=%s .*"
                       r"client=127\.0\.0\.1:%d reason=(\S+) \((.*)\)$" % (service, port),
                       start=off)
    ferry.check(m.group(1) == reason, f"logged reason={m.group(1)}, expected {reason}")
    ferry.check("certificate verify failed" in m.group(2),
                f"log line lacks OpenSSL's 'certificate verify failed': {m.group(0)}")
    ferry.check(re.search(words, m.group(2)) is not None,
                f"log line lacks OpenSSL's verify reason /{words}/: {m.group(0)}")
    ferry.check(str(upstream_port) in m.group(0),
                f"log line does not name the upstream :{upstream_port}: {m.group(0)}")
    after = ferry.wait_metric(lambda m: verify_failures(m, service, reason)
                              > verify_failures(before, service, reason),
                              what=f"ferry_handshake_failures_total{{service={service},"
                                   f"reason={reason}}} to move")
    time.sleep(0.2)
    after = ferry.scrape()
    for r in VERIFY_REASONS + ("other",):
        d = verify_failures(after, service, r) - verify_failures(before, service, r)
        ferry.check(d == (1 if r == reason else 0),
                    f"ferry_handshake_failures_total{{service={service},reason={r}}} moved by "
                    f"{d}, expected {1 if r == reason else 0}")
    d = handshakes(after, service=service) - handshakes(before, service=service)
    ferry.check(d == 0, f"ferry_handshakes_total{{service={service}}} moved by {d}")


@S.test
def untrusted_ca_is_unknown_ca():
    with PyTlsServer(P["untrusted"], rogue_crt, rogue_key):
        expect_upstream_failure("untrusted", P["untrusted"], "unknown_ca",
                                r"unable to get local issuer certificate")


@S.test
def hostname_mismatch():
    with PyTlsServer(P["mismatch"], wrong_crt, wrong_key):
        expect_upstream_failure("mismatch", P["mismatch"], "hostname_mismatch",
                                r"[Hh]ostname mismatch")


@S.test
def ip_literal_without_ip_san_is_hostname_mismatch():
    with PyTlsServer(P["ip_mismatch"], dns_only_crt, dns_only_key):
        expect_upstream_failure("ip_mismatch", P["ip_mismatch"], "hostname_mismatch",
                                r"IP address mismatch")


@S.test
def expired_is_cert_expired():
    with PyTlsServer(P["expired"], expired_crt, expired_key):
        expect_upstream_failure("expired", P["expired"], "cert_expired",
                                r"certificate has expired")


@S.test
def system_trust_store_does_not_know_the_test_ca():
    with PyTlsServer(P["py"], good_crt, good_key):
        expect_upstream_failure("sysstore", P["py"], "unknown_ca",
                                r"unable to get local issuer certificate")


@S.test
def wrong_purpose_is_bad_certificate():
    with PyTlsServer(P["purpose"], purpose_crt, purpose_key):
        expect_upstream_failure("purpose", P["purpose"], "bad_certificate",
                                r"(unsuitable|unsupported) certificate purpose")


@S.test
def verify_false_warns_and_connects_to_untrusted():
    text = ferry.stderr_text()
    warn = [l for l in text.splitlines()
            if re.search(r"\bwarn", l) and re.search(r"verif", l, re.I)
            and (f"service[{NOVERIFY_INDEX}]" in l or "noverify" in l)]
    ferry.check(warn, "no warning about verify = false (service noverify) at start")
    with PyTlsServer(P["untrusted"], rogue_crt, rogue_key) as srv:
        got = echo_roundtrip("noverify", [b"unverified\n"])
        ferry.check(got == [b"unverified\n"], f"verify = false: echo {got!r}, "
                                              f"server errors {srv.errors}")


@S.test
def sigterm_exits_0():
    ferry.stop()
    ferry_srv.stop()
    backend.stop()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_client_mode needs the real ferry")
        sys.exit(0)
    S.main()
