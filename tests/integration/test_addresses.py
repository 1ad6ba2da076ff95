#!/usr/bin/env python3
"""Address forms (issue 5): an IPv6 loopback listener and backend ([::1]); a unix socket
listener (unix_mode applied, a stale socket file removed at start, a socket in use by a live
listener refused, a regular file in the way refused and kept, unix_owner/unix_group when root,
the socket removed at exit) and a unix socket backend; a backend given by
host name ("localhost:PORT", resolved per connection). Each checks the access line's client=
and backend=, the backend metrics labelled as written, and that ferry keeps serving."""

import grp
import os
import pwd
import socket
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import peers as P  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("addresses")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
CTX = H.client_context(certs.ec_crt)
IS_ROOT = os.geteuid() == 0

backend = Backend().start()
backend6 = P.Backend6().start()
UNIX_BACKEND = os.path.join(tmp, "backend.sock")
ubackend = P.UnixBackend(UNIX_BACKEND).start()

FERRY_SOCK = os.path.join(tmp, "ferry.sock")
OWNED_SOCK = os.path.join(tmp, "owned.sock")
# A stale socket file where ferry's listener goes: bound, never listening, closed. Connecting to
# it is refused; ferry must remove it and bind its own.
_stale = socket.socket(socket.AF_UNIX)
_stale.bind(FERRY_SOCK)
_stale.close()
assert stat.S_ISSOCK(os.stat(FERRY_SOCK).st_mode)

P6 = H.free_port()
services = [
    H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key),
    H.service("v6", 0, 0, certs.ec_crt, certs.ec_key,
              accept=f"[::1]:{P6}", connect=f"[::1]:{backend6.port}"),
    H.service("unix_in", 0, backend.port, certs.ec_crt, certs.ec_key,
              accept=f"unix:{FERRY_SOCK}", unix_mode="0660"),
    H.service("unix_out", H.free_port(), 0, certs.ec_crt, certs.ec_key,
              connect=f"unix:{UNIX_BACKEND}"),
    H.service("named", H.free_port(), 0, certs.ec_crt, certs.ec_key,
              connect=f"localhost:{backend.port}"),
]
if IS_ROOT:
    NOBODY = pwd.getpwnam("nobody")
    NOBODY_GROUP = grp.getgrgid(NOBODY.pw_gid).gr_name
    services.append(H.service("unix_owned", 0, backend.port, certs.ec_crt, certs.ec_key,
                              accept=f"unix:{OWNED_SOCK}", unix_mode="0600",
                              unix_owner="nobody", unix_group=NOBODY_GROUP))
ferry = H.Ferry(tmp, services).start()
WEB = ("127.0.0.1", ferry.port("web"))


def normal_client_works():
    P.echo(WEB, CTX, b"still serving")


def backend_metric_moved(before, service, label, n=1):
    m = ferry.wait_metric(
        lambda m: P.delta(before, m, "ferry_backend_connections_total", service=service,
                          backend=label) >= n,
        what=f"ferry_backend_connections_total{{service={service},backend={label}}} to move "
             f"by {n}")
    d = P.delta(before, m, "ferry_backend_connections_total", service=service, backend=label)
    ferry.check(d == n, f"ferry_backend_connections_total{{backend={label}}} moved by {d}, "
                        f"expected {n}")
    labels = {ls["backend"] for ls, _ in H.mfind(m, "ferry_backend_connections_total",
                                                service=service)}
    ferry.check(labels == {label}, f"service {service}: backend labels {labels}, expected only "
                                   f"{{{label!r}}} (the backend as written in the config)")
    up = H.mget(m, "ferry_backend_up", service=service, backend=label)
    ferry.check(up == 1, f"ferry_backend_up{{service={service},backend={label}}} is {up}")
    return m


@S.test
def ipv6_listener_and_backend():
    before = ferry.scrape()
    acc0 = backend6.accepted
    off = ferry.log_offset()
    info = P.echo(("::1", P6), CTX, b"over ipv6")
    ferry.check(backend6.accepted == acc0 + 1,
                f"the [::1] backend accepted {backend6.accepted - acc0} connections, expected 1")
    want_client = P.client_addr(info["local"])
    P.wait_access(ferry, off, lambda a: a.get("service") == "v6"
                  and a.get("client") == want_client
                  and a.get("backend") == f"[::1]:{backend6.port}",
                  what=f"access line service=v6 client={want_client} "
                       f"backend=[::1]:{backend6.port}")
    backend_metric_moved(before, "v6", f"[::1]:{backend6.port}")
    normal_client_works()


@S.test
def ipv6_listener_is_v6_only():
    """[::1]:port is an IPv6 listener; 127.0.0.1:same port is not served by it."""
    try:
        with socket.create_connection(("127.0.0.1", P6), timeout=H.bound(2)):
            connected = True
    except OSError:
        connected = False
    ferry.check(not connected, f"127.0.0.1:{P6} accepted a connection: the [::1] listener "
                               f"is not bound to ::1 only")


@S.test
def unix_listener_mode_and_stale_file():
    st = os.stat(FERRY_SOCK)
    ferry.check(stat.S_ISSOCK(st.st_mode), f"{FERRY_SOCK} is not a socket")
    # (not the inode: a new file may get the unlinked one's number) the stale file would refuse
    # connections: the echo below shows ferry's own socket is at the path
    mode = stat.S_IMODE(st.st_mode)
    ferry.check(mode == 0o660, f"{FERRY_SOCK} has mode {mode:04o}, unix_mode is 0660")
    ferry.check(st.st_uid == os.geteuid(), f"{FERRY_SOCK} is owned by uid {st.st_uid}")
    before = ferry.scrape()
    off = ferry.log_offset()
    for i in range(3):
        P.echo(FERRY_SOCK, CTX, b"over unix %d" % i)
    a = P.wait_access(ferry, off, lambda a: a.get("service") == "unix_in"
                      and a.get("backend") == f"127.0.0.1:{backend.port}"
                      and a.get("end") == "done",
                      what="access line service=unix_in ... end=done")
    m = ferry.wait_metric(lambda m: P.delta(before, m, "ferry_connections_total",
                                            service="unix_in") >= 3,
                          what="ferry_connections_total{service=unix_in} to move by 3")
    d = P.delta(before, m, "ferry_handshakes_total", service="unix_in")
    ferry.check(d == 3, f"ferry_handshakes_total{{service=unix_in}} moved by {d}, expected 3")
    normal_client_works()
    # the peer of a unix socket has no IP address: written as "unix:..." (as the handshake
    # failure line does), not as a placeholder IP:port
    ferry.check(a.get("client", "").startswith("unix:"),
                f"access line of a unix-socket client: client={a.get('client')}, expected "
                f"unix:... (the handshake failure line writes client=unix:(unnamed))")


@S.test
def unix_owner_and_group():
    if not IS_ROOT:
        print("  (skipped: unix_owner/unix_group need root)")
        return
    st = os.stat(OWNED_SOCK)
    ferry.check(st.st_uid == NOBODY.pw_uid and st.st_gid == NOBODY.pw_gid,
                f"{OWNED_SOCK}: uid {st.st_uid} gid {st.st_gid}, expected nobody "
                f"({NOBODY.pw_uid}) and {NOBODY_GROUP} ({NOBODY.pw_gid})")
    mode = stat.S_IMODE(st.st_mode)
    ferry.check(mode == 0o600, f"{OWNED_SOCK} has mode {mode:04o}, unix_mode is 0600")
    P.echo(OWNED_SOCK, CTX, b"owned")


def expect_start_refused(path, name):
    """A ferry whose unix listener is `path` must exit non-zero at start, naming the path."""
    f = H.Ferry(tmp, [H.service(name, 0, backend.port, certs.ec_crt, certs.ec_key,
                                accept=f"unix:{path}")], name=name)
    try:
        f.start()
    except AssertionError:
        pass
    else:
        f.kill()
        ferry.fail(f"ferry started with its unix listener on {path}, a socket in use")
    rc = f.wait_exit(10)
    if rc is None:
        f.kill()
        ferry.fail(f"{name}: ferry did not exit")
    f.check(rc != 0, f"{name}: exit code {rc} for a socket in use, expected non-zero")
    f.check(path in f.stderr_text(), f"{name}: the error does not name {path}")


@S.test
def unix_socket_in_use_is_refused():
    # a live listener that is not ferry
    path = os.path.join(tmp, "busy.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(4)
    try:
        ino = os.stat(path).st_ino
        expect_start_refused(path, "busy")
        ferry.check(os.path.exists(path) and os.stat(path).st_ino == ino,
                    f"the live listener's socket file {path} was removed or replaced")
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(H.bound(5))
            c.connect(path)
            live.settimeout(H.bound(5))
            a, _ = live.accept()
            a.close()
    finally:
        live.close()
    # ferry's own listener, in use by the running ferry
    expect_start_refused(FERRY_SOCK, "busy2")
    ferry.check(os.path.exists(FERRY_SOCK), f"{FERRY_SOCK} was removed by the refused ferry")
    P.echo(FERRY_SOCK, CTX, b"still mine")
    normal_client_works()


@S.test
def regular_file_in_the_way_is_not_removed():
    """Only a stale *socket* is removed: a regular file at the path is an error, left as is."""
    path = os.path.join(tmp, "regular.sock")
    with open(path, "w") as f:
        f.write("precious")
    expect_start_refused(path, "regular")
    with open(path) as f:
        ferry.check(f.read() == "precious", f"the regular file {path} was changed")


@S.test
def unix_backend():
    before = ferry.scrape()
    acc0 = ubackend.accepted
    off = ferry.log_offset()
    info = P.echo(("127.0.0.1", ferry.port("unix_out")), CTX, b"to a unix backend")
    ferry.check(ubackend.accepted == acc0 + 1,
                f"the unix backend accepted {ubackend.accepted - acc0} connections, expected 1")
    want_client = P.client_addr(info["local"])
    P.wait_access(ferry, off, lambda a: a.get("service") == "unix_out"
                  and a.get("client") == want_client
                  and a.get("backend") == f"unix:{UNIX_BACKEND}",
                  what=f"access line service=unix_out backend=unix:{UNIX_BACKEND}")
    backend_metric_moved(before, "unix_out", f"unix:{UNIX_BACKEND}")
    normal_client_works()


@S.test
def hostname_backend():
    before = ferry.scrape()
    acc0 = backend.accepted
    off = ferry.log_offset()
    for i in range(5):
        info = P.echo(("127.0.0.1", ferry.port("named")), CTX, b"by name %d" % i)
    ferry.check(backend.accepted == acc0 + 5,
                f"the backend accepted {backend.accepted - acc0} connections, expected 5")
    want_client = P.client_addr(info["local"])
    a = P.wait_access(ferry, off, lambda a: a.get("service") == "named"
                      and a.get("client") == want_client,
                      what=f"access line service=named client={want_client}")
    # the backend as written, optionally followed by the address used: localhost:P(127.0.0.1:P)
    ferry.check(H.re.fullmatch(r"localhost:%d(\(127\.0\.0\.1:%d\))?" % (backend.port,
                                                                        backend.port),
                               a.get("backend", "")) is not None,
                f"access line backend={a.get('backend')}, expected localhost:{backend.port} "
                f"or localhost:{backend.port}(127.0.0.1:{backend.port})")
    backend_metric_moved(before, "named", f"localhost:{backend.port}", n=5)
    normal_client_works()


@S.test
def hostname_backend_resolved_per_connection():
    """The name is not resolved once for good: with the backend down, a connect fails; when it
    is back (same name, same port), the next client gets through."""
    b2_port = H.free_port()
    f = H.Ferry(tmp, [H.service("named2", H.free_port(), 0, certs.ec_crt, certs.ec_key,
                                connect=f"localhost:{b2_port}", connect_timeout="2s")],
                name="ferry-named2").start()
    try:
        port = f.port("named2")
        try:
            with P.tls_connect(("127.0.0.1", port), CTX) as s:
                s.sendall(b"ECHO\nx")
                f.check(H.wait_eof(s, H.bound(5)) is not None,
                        "with the backend down the client's connection was not ended")
        except OSError:
            pass
        f.wait_metric(lambda m: H.mget(m, "ferry_backend_connect_failures_total",
                                      service="named2",
                                      backend=f"localhost:{b2_port}") >= 1,
                      what=f"ferry_backend_connect_failures_total{{backend=localhost:"
                           f"{b2_port}}} to move")
        with Backend(b2_port) as b2:
            P.echo(("127.0.0.1", port), CTX, b"back")
            f.check(b2.accepted == 1, f"the backend accepted {b2.accepted}")
    finally:
        f.stop()


@S.test
def sigterm_exits_0():
    ferry.stop()
    ferry.check(not os.path.exists(FERRY_SOCK), f"{FERRY_SOCK} is left behind after exit")
    for b in (backend, backend6, ubackend):
        b.stop()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_addresses needs the real ferry (logs and metrics)")
        sys.exit(0)
    S.main()
