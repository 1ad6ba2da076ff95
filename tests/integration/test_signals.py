#!/usr/bin/env python3
"""SIGTERM / SIGINT: stop accepting, drain open connections for up to shutdown_timeout, exit 0.

(The drain of a busy transfer and a second SIGTERM are covered by test_reload.py.)"""

import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("signals")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
CTX = H.client_context(certs.ec_crt)


def new_ferry(name, workers=2):
    return H.Ferry(tmp, [H.service("web", H.free_port(), backend.port, certs.ec_crt,
                                   certs.ec_key)], workers=workers, name=name,
                   global_extra={"shutdown_timeout": "1s"})


def stops_listening(f):
    port = f.port()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    except OSError:
        return
    f.fail(f"port {port} still accepts connections after ferry exited")


def idle(sig):
    f = new_ferry(f"idle-{sig.name}")
    try:
        f.start()
        took = f.stop(sig, timeout=5)
        f.check(took < H.bound(5), f"{sig.name} while idle: took {took:.1f}s")
        stops_listening(f)
    finally:
        f.kill()


def with_connection(sig):
    f = new_ferry(f"conn-{sig.name}")
    try:
        f.start()
        with H.tls_connect(f.port(), CTX, timeout=H.bound(10)) as s:
            client_port = s.getsockname()[1]
            s.sendall(b"ECHO\nopen")
            f.check(H.recv_exact(s, 4) == b"open", "echo before the signal failed")
            took = f.stop(sig, timeout=10)
            # An idle established connection is given shutdown_timeout (1s) to finish, then
            # closed; the metrics endpoint needs up to ~2s more to stop.
            f.check(took >= 0.9, f"{sig.name} did not wait for the open connection ({took:.2f}s)")
            f.check(took < H.bound(6), f"{sig.name} with a connection: took {took:.1f}s")
            f.check(H.wait_eof(s, H.bound(5)) is not None,
                    "the client's connection stayed open after ferry exited")
        if not H.STANDIN:
            f.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .*"
                       r" end=shutdown$" % client_port, timeout=1)
        stops_listening(f)
    finally:
        f.kill()


@S.test
def sigterm_idle():
    idle(signal.SIGTERM)


@S.test
def sigint_idle():
    idle(signal.SIGINT)


@S.test
def sigterm_with_open_connection():
    with_connection(signal.SIGTERM)


@S.test
def sigint_with_open_connection():
    with_connection(signal.SIGINT)


@S.test
def sigterm_mid_handshake():
    """A client that connected but has not finished its handshake does not hold ferry up: it is
    not established, so the drain closes it at once."""
    f = new_ferry("handshake")
    try:
        f.start()
        with socket.create_connection(("127.0.0.1", f.port()), timeout=H.bound(10)):
            took = f.stop(signal.SIGTERM, timeout=10)
            f.check(took < H.bound(3), f"SIGTERM mid-handshake took {took:.1f}s")
    finally:
        f.kill()


@S.test
def sigterm_right_after_start():
    f = new_ferry("early", workers=4)
    try:
        f.start()
        f.stop(signal.SIGTERM, timeout=5)
    finally:
        f.kill()
    backend.stop()


if __name__ == "__main__":
    S.main()
