#!/usr/bin/env python3
"""Data path: 64 MiB each way checked by sha256, real clients (Python ssl, openssl s_client,
curl), TLS 1.2 and 1.3, RSA and EC certificates, a backend that speaks first, and the byte and
handshake metrics moving with the traffic."""

import hashlib
import os
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import HTTP_BODY, Backend, source_chunks, source_digest  # noqa: E402

MiB = 1 << 20
BIG = 64 * MiB
AEAD = ("GCM", "CHACHA20_POLY1305")

S = H.Suite("data")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
banner_backend = Backend(banner=b"220 banner from backend\n").start()
V6_PORT = H.free_port()
ferry = H.Ferry(tmp, [
    H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key),
    dict(H.service("v6", V6_PORT, backend.port, certs.ec_crt, certs.ec_key),
         accept=f"[::1]:{V6_PORT}"),
    H.service("rsa", H.free_port(), backend.port, certs.rsa_crt, certs.rsa_key),
    H.service("banner", H.free_port(), banner_backend.port, certs.ec_crt, certs.ec_key),
]).start()
PORT = ferry.port("web")
CTX = H.client_context(certs.ec_crt)


def upload(port, ctx, nbytes, seed=b"upload"):
    """SINK nbytes, then close_notify (half-close); returns (bytes sent incl. the mode line,
    reply length, cipher, version). TCP FIN without close_notify: test_halfclose."""
    expect = hashlib.sha256()
    reply = bytearray()

    def chunks():
        yield b"SINK\n"
        for c in source_chunks(nbytes, seed):
            expect.update(c)
            yield c
    with H.MemTLS(port, ctx, timeout=H.bound(120)) as t:
        how = t.duplex(chunks(), reply.extend, half_close="close_notify", timeout=H.bound(120))
        cipher, version = t.cipher()[0], t.version()
    ferry.check(reply == expect.hexdigest().encode() + b"\n",
                f"SINK of {nbytes} bytes: backend saw sha256 {bytes(reply)!r}, "
                f"sent {expect.hexdigest()} (ferry ended with {how})")
    return 5 + nbytes, len(reply), cipher, version


def download(port, ctx, nbytes):
    with H.tls_connect(port, ctx, timeout=H.bound(120)) as s:
        s.sendall(b"SOURCE %d\n" % nbytes)
        h = hashlib.sha256()
        got = H.recv_all(s, hasher=h)
        cipher, version = s.cipher()[0], s.version()
    ferry.check(got == nbytes and h.hexdigest() == source_digest(nbytes),
                f"SOURCE {nbytes}: received {got} bytes, sha256 {h.hexdigest()}, "
                f"expected {source_digest(nbytes)}")
    return got, cipher, version


def wait_bytes(before, service, to_backend, to_client):
    def ok(m):
        return (H.mget(m, "ferry_bytes_total", service=service, direction="to_backend")
                - H.mget(before, "ferry_bytes_total", service=service, direction="to_backend")
                >= to_backend and
                H.mget(m, "ferry_bytes_total", service=service, direction="to_client")
                - H.mget(before, "ferry_bytes_total", service=service, direction="to_client")
                >= to_client)
    if ferry.has_metrics:
        ferry.wait_metric(ok, what=f"ferry_bytes_total{{service={service}}} to move by "
                                   f"to_backend>={to_backend} to_client>={to_client}")


def handshakes(m, **labels):
    return H.mget(m, "ferry_handshakes_total", **labels)


@S.test
def upload_64mib_tls13():
    before = ferry.scrape()
    sent, replied, cipher, version = upload(PORT, CTX, BIG)
    assert version == "TLSv1.3", version
    wait_bytes(before, "web", sent, replied)
    if ferry.has_metrics:
        after = ferry.scrape()
        d = (handshakes(after, service="web", version="TLSv1.3", cipher=cipher)
             - handshakes(before, service="web", version="TLSv1.3", cipher=cipher))
        ferry.check(d == 1, f"ferry_handshakes_total{{version=TLSv1.3,cipher={cipher}}} "
                            f"moved by {d}, expected 1")


@S.test
def download_64mib_tls13():
    before = ferry.scrape()
    got, cipher, version = download(PORT, CTX, BIG)
    assert version == "TLSv1.3", version
    wait_bytes(before, "web", len(b"SOURCE %d\n" % BIG), got)


@S.test
def both_directions_at_once():
    """ECHO 32 MiB, reading while writing: backpressure must not deadlock or lose bytes."""
    n = 32 * MiB
    h_in, h_out = hashlib.sha256(), hashlib.sha256()

    def chunks():
        yield b"ECHO\n"
        for c in source_chunks(n, b"echo"):
            h_out.update(c)
            yield c
    with H.MemTLS(PORT, CTX, timeout=H.bound(120)) as t:
        how = t.duplex(chunks(), h_in.update, half_close="close_notify", timeout=H.bound(120))
    ferry.check(h_in.hexdigest() == h_out.hexdigest(),
                f"echoed bytes differ (peer ended with {how})")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """The largest RSS of ferry seen while the block runs."""

    def __enter__(self):
        self.base = rss_bytes(ferry.proc.pid)
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(ferry.proc.pid))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


RSS_SLACK = 24 * MiB  # bounded buffers: far less than the 128 MiB held back below


@S.test
def backpressure_slow_client():
    """The client stops reading a 128 MiB download for 1.5 s: ferry must not buffer it."""
    n = 128 * MiB
    with RssSampler() as rss, H.tls_connect(PORT, CTX, timeout=H.bound(120)) as s:
        s.sendall(b"SOURCE %d\n" % n)
        time.sleep(1.5)
        grown = rss.peak - rss.base
        h = hashlib.sha256()
        got = H.recv_all(s, hasher=h)
    ferry.check(got == n and h.hexdigest() == source_digest(n), "slow client: bytes differ")
    if H.SLOWDOWN == 1 and not H.STANDIN:  # sanitizer quarantine inflates RSS
        ferry.check(grown < RSS_SLACK, f"ferry's RSS grew by {grown >> 20} MiB while the "
                                       f"client was not reading")


@S.test
def backpressure_slow_backend():
    """The backend reads nothing for 1.5 s while the client uploads 128 MiB."""
    n = 128 * MiB
    expect, reply = hashlib.sha256(), bytearray()

    def chunks():
        yield b"SINK 1500\n"
        for c in source_chunks(n, b"slow"):
            expect.update(c)
            yield c
    with RssSampler() as rss, H.MemTLS(PORT, CTX, timeout=H.bound(120)) as t:
        t.duplex(chunks(), reply.extend, half_close="close_notify", timeout=H.bound(120))
    grown = rss.peak - rss.base
    ferry.check(reply == expect.hexdigest().encode() + b"\n", "slow backend: bytes differ")
    if H.SLOWDOWN == 1 and not H.STANDIN:
        ferry.check(grown < RSS_SLACK, f"ferry's RSS grew by {grown >> 20} MiB while the "
                                       f"backend was not reading")


@S.test
def tls12_ecdhe_aead_ec_and_rsa():
    for svc, kx in (("web", "ECDHE_ECDSA"), ("rsa", "ECDHE_RSA")):
        before = ferry.scrape()
        ctx = H.client_context(certs.ec_crt if svc == "web" else certs.rsa_crt,
                               max_version=ssl.TLSVersion.TLSv1_2)
        _, _, cipher, version = upload(ferry.port(svc), ctx, 100_000)
        assert version == "TLSv1.2", version
        iana = H.iana_cipher_name(cipher)
        ferry.check(iana.startswith(f"TLS_{kx}_WITH_") and any(a in iana for a in AEAD),
                    f"{svc}: TLS 1.2 negotiated {iana}, expected ECDHE + AEAD")
        if ferry.has_metrics:
            m = ferry.wait_metric(
                lambda m: handshakes(m, service=svc, version="TLSv1.2")
                > handshakes(before, service=svc, version="TLSv1.2"),
                what=f"ferry_handshakes_total{{service={svc},version=TLSv1.2}} to move")
            d = (handshakes(m, service=svc, version="TLSv1.2", cipher=iana)
                 - handshakes(before, service=svc, version="TLSv1.2", cipher=iana))
            ferry.check(d == 1, f"ferry_handshakes_total{{service={svc},version=TLSv1.2,"
                                f"cipher={iana}}} moved by {d}, expected 1; "
                                f"{H.mfind(m, 'ferry_handshakes_total', service=svc)}")


@S.test
def rsa_certificate_tls13():
    ctx = H.client_context(certs.rsa_crt)
    got, _, version = download(ferry.port("rsa"), ctx, 3 * MiB + 7)
    assert version == "TLSv1.3"


@S.test
def openssl_s_client():
    n = 4 * MiB + 3
    for extra in ([], ["-tls1_2"]):
        r = H.run(["openssl", "s_client", "-connect", f"127.0.0.1:{PORT}", "-servername",
                   "localhost", "-CAfile", certs.ec_crt, "-verify_return_error",
                   "-verify_hostname", "localhost", "-quiet", *extra],
                  input=b"SOURCE %d\n" % n, timeout=H.bound(60), check=False)
        digest = hashlib.sha256(r.stdout).hexdigest()
        ferry.check(r.returncode == 0 and digest == source_digest(n),
                    f"s_client {extra}: exit {r.returncode}, {len(r.stdout)} bytes, "
                    f"stderr {r.stderr.decode(errors='replace')[-500:]}")


@S.test
def curl_http_get():
    before = ferry.scrape()
    for extra in ([], ["--tlsv1.2", "--tls-max", "1.2"]):
        r = H.run(["curl", "-sS", "--max-time", str(H.bound(30)), "--cacert", certs.ec_crt,
                   "--resolve", f"localhost:{PORT}:127.0.0.1", *extra,
                   f"https://localhost:{PORT}/"], timeout=H.bound(60), check=False)
        ferry.check(r.returncode == 0 and r.stdout == HTTP_BODY,
                    f"curl {extra}: exit {r.returncode}, body {r.stdout[:200]!r}, "
                    f"stderr {r.stderr.decode(errors='replace')}")
    if ferry.has_metrics:
        ferry.wait_metric(
            lambda m: handshakes(m, service="web", version="TLSv1.2")
            > handshakes(before, service="web", version="TLSv1.2")
            and handshakes(m, service="web", version="TLSv1.3")
            > handshakes(before, service="web", version="TLSv1.3"),
            what="curl's TLS 1.2 and 1.3 handshakes counted")


@S.test
def backend_speaks_first():
    with H.MemTLS(ferry.port("banner"), CTX, timeout=H.bound(10)) as t:
        got = b""
        while not got.endswith(b"\n") and len(got) < 100:
            b = t.recv(100)
            if not b:
                break
            got += b
        ferry.check(got == b"220 banner from backend\n", f"banner: got {got!r}")
        t.sendall(b"ECHO\nabc")
        t.close_write()
        rest = b""
        for _ in range(100):
            b = t.recv()
            if not b:
                break
            rest += b
        ferry.check(rest == b"abc", f"echo after banner: got {rest!r}")


@S.test
def access_log_line():
    """One access line per finished connection with the fields of the contract."""
    with H.MemTLS(PORT, CTX, timeout=H.bound(30)) as t:
        port = t.sock.getsockname()[1]
        t.sendall(b"SINK\n12345")
        t.close_write()
        for _ in range(100):
            if not t.recv():
                break
        cipher = t.cipher()[0]
    if H.STANDIN:
        return
    m = ferry.wait_log(
        r"^\S+Z info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d "
        r"version=TLSv1\.3 cipher=%s sni=localhost alpn=- resumed=no client_cert=- "
        r"backend=127\.0\.0\.1:%d to_backend=(\d+) to_client=(\d+) handshake=\d+\.\d+s "
        r"duration=\d+\.\d+s end=done$" % (port, cipher, backend.port))
    ferry.check(int(m.group(1)) == 10 and int(m.group(2)) == 65,
                f"access line byte counts: {m.group(0)}")


@S.test
def access_log_without_sni():
    ctx = H.client_context(certs.ec_crt, verify=False)
    with H.tls_connect(PORT, ctx, server_hostname=None) as s:  # no SNI
        port = s.getsockname()[1]
        s.sendall(b"ECHO\nx")
        H.recv_exact(s, 1)
    if not H.STANDIN:
        ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d "
                       r"version=TLSv1\.3 cipher=\S+ sni=- " % port)


@S.test
def ipv6_accept():
    raw = H.socket.create_connection(("::1", V6_PORT), timeout=H.bound(10))
    with CTX.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"SOURCE 100000\n")
        h = hashlib.sha256()
        n = H.recv_all(s, hasher=h)
    ferry.check(n == 100000 and h.hexdigest() == source_digest(100000), "SOURCE over [::1]")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()
    banner_backend.stop()


if __name__ == "__main__":
    S.main()
