#!/usr/bin/env python3
"""Half-close: a client that shuts its write side (TCP FIN without close_notify, close_notify
alone, or both) still receives the backend's reply; a backend that shuts its write side first
still receives what the client sends afterwards. No byte is lost on the way."""

import hashlib
import os
import ssl
import time
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend, source_chunks, source_digest  # noqa: E402

S = H.Suite("halfclose")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
ferry = H.Ferry(tmp, [H.service("web", H.free_port(), backend.port, certs.ec_crt,
                                certs.ec_key)]).start()
PORT = ferry.port()
CTX13 = H.client_context(certs.ec_crt)
CTX12 = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2)
SIZES = (0, 1, 5000, 8 << 20)


def expected_reply(n, seed):
    h = hashlib.sha256()
    for c in source_chunks(n, seed):
        h.update(c)
    return h.hexdigest().encode() + b"\n"


def check_done_logged(client_port):
    if H.STANDIN:
        return
    ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .* "
                   r"end=done$" % client_port)


@S.test
def tcp_fin_without_close_notify():
    """The client half-closes TCP without a close_notify (what many clients do on shutdown(2)
    of a TLS socket). ferry must treat it as the end of the client's stream, not as an error."""
    bad = []
    for name, ctx in (("TLS 1.3", CTX13), ("TLS 1.2", CTX12)):
        for n in SIZES:
            seed = b"fin%d" % n
            try:
                with H.tls_connect(PORT, ctx, timeout=H.bound(60)) as s:
                    version = s.version()
                    client_port = s.getsockname()[1]
                    s.sendall(b"SINK\n")
                    for c in source_chunks(n, seed):
                        s.sendall(c)
                    H.tcp_shutdown_write(s)  # FIN, no close_notify; TLS state kept for reading
                    reply = H.recv_all(s, limit=1024)
            except (ssl.SSLError, OSError) as e:
                bad.append(f"{name} SINK {n} bytes + TCP FIN: {e!r}")
                continue
            if reply != expected_reply(n, seed):
                bad.append(f"{version} SINK {n} bytes + TCP FIN: reply {reply!r}, expected "
                           f"{expected_reply(n, seed)!r}")
                continue
            check_done_logged(client_port)
    ferry.check(not bad, "the backend's reply did not reach the client:\n  " + "\n  ".join(bad))


@S.test
def close_notify_then_read():
    for ctx in (CTX13, CTX12):
        for mode in ("close_notify", "both"):
            for n in SIZES:
                seed = b"cn%d" % n
                got = bytearray()

                def chunks():
                    yield b"SINK\n"
                    yield from source_chunks(n, seed)
                with H.MemTLS(PORT, ctx, timeout=H.bound(60)) as t:
                    client_port = t.sock.getsockname()[1]
                    version = t.version()
                    how = t.duplex(chunks(), got.extend, half_close=mode, timeout=H.bound(60))
                ferry.check(bytes(got) == expected_reply(n, seed),
                            f"{version} SINK {n} bytes + {mode}: reply {bytes(got)!r} "
                            f"(peer ended with {how}), expected {expected_reply(n, seed)!r}")
                check_done_logged(client_port)


@S.test
def backend_closes_first():
    """HALF: the backend sends n bytes and shuts its write side; the client sees the end of
    the stream, then still sends its own data, which must reach the backend."""
    if H.STANDIN:
        return  # stunnel does not keep the other direction open
    for n in (0, 10, 3 << 20):
        before = len(backend.half_digests)
        with H.MemTLS(PORT, CTX13, timeout=H.bound(60)) as t:
            t.sendall(b"HALF %d\n" % n)
            h, got = hashlib.sha256(), 0
            for _ in range(1 << 20):
                b = t.recv()
                if not b:
                    break
                h.update(b)
                got += len(b)
            ferry.check(got == n and h.hexdigest() == source_digest(n),
                        f"HALF {n}: received {got} bytes before the end of stream")
            payload = b"after the backend's EOF " * 1000
            t.sendall(payload)
            t.close_write()
            t.shutdown_tcp_write()
            t.settimeout(H.bound(10))
            for _ in range(100):
                try:
                    if not t.recv():
                        break
                except OSError:
                    break
        for _ in range(int(H.bound(100))):
            if len(backend.half_digests) > before:
                break
            time.sleep(0.05)
        ferry.check(len(backend.half_digests) > before, f"HALF {n}: backend never saw EOF")
        ferry.check(backend.half_digests[before] == hashlib.sha256(payload).hexdigest(),
                    f"HALF {n}: the client's data after the backend's EOF did not arrive intact")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()


if __name__ == "__main__":
    S.main()
