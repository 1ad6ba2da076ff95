#!/usr/bin/env python3
"""systemd: the unit files (systemd-analyze verify and security), the sd_notify protocol seen on
a fake NOTIFY_SOCKET (READY, RELOADING + MONOTONIC_USEC, READY, STOPPING, STATUS, WATCHDOG), and
socket activation through systemd-socket-activate with accept = "systemd:NAME"."""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("systemd")
UNIT_DIR = os.path.join(H.REPO, "systemd")
UNITS = ["ferry.service", "ferry@.service", "ferry.socket"]
INSTALLED_BIN = "/usr/local/bin/ferry"  # what the units run (CMake's default prefix)
MAX_EXPOSURE = 2.0  # systemd-analyze security: "OK" or better

if H.STANDIN:
    print("test_systemd: ferry only (FERRY_STANDIN is set); nothing to do")
    sys.exit(0)

tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
CTX = H.client_context(certs.ec_crt)
CTX.load_verify_locations(certs.rsa_crt)  # socket activation serves both certificates


def need_tool(name):
    if shutil.which(name) is None:
        raise AssertionError(f"{name} is not installed (.ci/install-deps installs systemd)")


def units_for_verify():
    """The units copied to a temp dir with ExecStart= etc. pointing at the built binary:
    `systemd-analyze verify` checks that every command exists and is executable."""
    d = H.make_temp_dir("ferry-units-")
    for u in UNITS:
        with open(os.path.join(UNIT_DIR, u)) as f:
            text = f.read()
        assert INSTALLED_BIN in text or u.endswith(".socket"), f"{u} does not run {INSTALLED_BIN}"
        with open(os.path.join(d, u), "w") as f:
            f.write(text.replace(INSTALLED_BIN, os.path.abspath(H.FERRY_BIN)))
    return d


# ---- unit files ----------------------------------------------------------------------------


@S.test
def units_verify():
    need_tool("systemd-analyze")
    d = units_for_verify()
    paths = [os.path.join(d, u) for u in UNITS]
    r = H.run(["systemd-analyze", "verify", "--man=no", *paths], check=False, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace").strip()
    assert r.returncode == 0 and not out, (
        f"systemd-analyze verify: exit {r.returncode}\n{out}")


@S.test
def units_contract():
    """The settings the daemon's behaviour depends on (a verify pass does not catch a wrong
    Type= or a stop timeout shorter than the drain)."""
    def settings(name):
        kv = {}
        with open(os.path.join(UNIT_DIR, name)) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith(("#", ";", "[")) and "=" in line:
                    k, v = line.split("=", 1)
                    kv.setdefault(k.strip(), []).append(v.strip())
        return kv

    for name, conf in (("ferry.service", "/etc/ferry/ferry.toml"),
                       ("ferry@.service", "/etc/ferry/%i.toml")):
        kv = settings(name)
        one = lambda k: (kv.get(k) or [None])[-1]  # noqa: E731
        assert one("Type") == "notify", (name, one("Type"))
        assert one("NotifyAccess") == "main", (name, one("NotifyAccess"))
        assert one("ExecStart") == f"{INSTALLED_BIN} --config {conf}", (name, one("ExecStart"))
        assert one("ExecStartPre") == f"{INSTALLED_BIN} --check --config {conf}", name
        assert one("ExecReload") == "/bin/kill -HUP $MAINPID", name
        assert one("WatchdogSec") == "30s", name
        # ferry drains for up to shutdown_timeout (default 30s) before it exits.
        assert H.parse_duration_s(one("TimeoutStopSec")) > 30, (name, one("TimeoutStopSec"))
        assert one("User") == "ferry" and one("Group") == "ferry", name
        assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE", name
        assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE", name
        # ferry raises RLIMIT_NOFILE itself: @resources (setrlimit) must stay allowed.
        for f in kv.get("SystemCallFilter", []):
            assert "@resources" not in f, (name, f)
    sock = settings("ferry.socket")
    assert sock.get("FileDescriptorName") == ["web"], sock.get("FileDescriptorName")
    assert sock.get("Service") == ["ferry.service"], sock.get("Service")
    with open(os.path.join(UNIT_DIR, "ferry.socket")) as f:
        assert 'accept = "systemd:web"' in f.read(), "ferry.socket: no matching config example"


def exposure(unit_path):
    r = H.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit_path],
              check=False, timeout=60)
    text = (r.stdout + r.stderr).decode(errors="replace")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\S+)", text)
    assert m, f"no exposure level in systemd-analyze security output:\n{text}"
    return float(m.group(1)), m.group(2), text


@S.test
def units_security_score():
    need_tool("systemd-analyze")
    d = units_for_verify()
    for u in ("ferry.service", "ferry@.service"):
        score, word, text = exposure(os.path.join(d, u))
        print(f"     systemd-analyze security {u}: {score} {word}", flush=True)
        assert score <= MAX_EXPOSURE, (
            f"{u}: exposure {score} {word} > {MAX_EXPOSURE}\n"
            + "\n".join(l for l in text.splitlines() if "✗" in l))


@S.test
def sysusers_and_tmpfiles():
    """The sysusers.d and tmpfiles.d snippets, applied to an empty root directory."""
    need_tool("systemd-sysusers")
    need_tool("systemd-tmpfiles")
    root = H.make_temp_dir("ferry-root-")
    os.makedirs(os.path.join(root, "etc"))
    H.run(["systemd-sysusers", f"--root={root}", os.path.join(UNIT_DIR, "ferry.sysusers")])
    with open(os.path.join(root, "etc", "passwd")) as f:
        users = [l.split(":") for l in f.read().splitlines()]
    ferry = [u for u in users if u[0] == "ferry"]
    assert ferry, f"no ferry user in {users}"
    uid, gid, home = int(ferry[0][2]), int(ferry[0][3]), ferry[0][5]
    assert 0 < uid < 1000 and home == "/var/lib/ferry", ferry
    with open(os.path.join(root, "etc", "group")) as f:
        assert any(l.split(":")[0] == "ferry" and int(l.split(":")[2]) == gid
                   for l in f.read().splitlines()), "no ferry group"
    # Resolve user names inside the new root; that needs the group to exist there.
    r = H.run(["systemd-tmpfiles", "--create", f"--root={root}",
               os.path.join(UNIT_DIR, "ferry.tmpfiles")], check=False)
    st = os.stat(os.path.join(root, "etc", "ferry"))
    assert (st.st_mode & 0o7777) == 0o750, (oct(st.st_mode), r.stderr.decode())
    assert st.st_uid == 0 and st.st_gid == gid, (st.st_uid, st.st_gid, gid, r.stderr.decode())


# ---- sd_notify -----------------------------------------------------------------------------


class NotifySocket:
    """A Unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self.path = os.path.join(H.make_temp_dir("ferry-notify-"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen = []  # every message received, as {key: value}, in order

    def next(self, timeout):
        """The next message as a dict, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        msg = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
        self.seen.append(msg)
        return msg

    def wait_for(self, key, timeout, f=None):
        """Messages until one carries `key`; returns it. Fails after `timeout` seconds."""
        deadline = time.monotonic() + H.bound(timeout)
        while True:
            left = deadline - time.monotonic()
            msg = self.next(left) if left > 0 else None
            if msg is None:
                what = f"no {key} on NOTIFY_SOCKET within {H.bound(timeout)}s; seen: {self.seen}"
                if f is not None:
                    f.fail(what)
                raise AssertionError(what)
            if key in msg:
                return msg

    def close(self):
        self.sock.close()


def start_with_env(f, env, **kw):
    """Ferry.start() with extra environment variables for the daemon only."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return f.start(**kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def order_of(seen, keys):
    """Indices of the first message carrying each key, in turn, after the previous one."""
    out, i = [], 0
    for k in keys:
        while i < len(seen) and k not in seen[i]:
            i += 1
        out.append(i if i < len(seen) else None)
        i += 1
    return out


@S.test
def notify_ready_reload_stopping():
    ns = NotifySocket()
    f = H.Ferry(tmp, [H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key)],
                workers=2, name="notify")
    try:
        start_with_env(f, {"NOTIFY_SOCKET": ns.path})
        ready = ns.wait_for("READY", 5, f)
        f.check(ready["READY"] == "1", f"READY={ready['READY']}")
        # READY=1 means every listener is bound: a client gets through at once.
        with H.tls_connect(f.port(), CTX, timeout=H.bound(10)) as s:
            s.sendall(b"ECHO\nready")
            f.check(H.recv_exact(s, 5) == b"ready", "echo right after READY=1 failed")

        # Reload: RELOADING=1 with MONOTONIC_USEC of the moment, then READY=1 again.
        offset = f.log_offset()
        before = time.monotonic_ns() // 1000
        f.send_signal(signal.SIGHUP)
        reload_unsupported = False
        deadline = time.monotonic() + H.bound(10)
        msg = None
        while time.monotonic() < deadline:
            msg = ns.next(0.2)
            if msg is not None and "RELOADING" in msg:
                break
            if re.search(r"reload is not implemented", f.stderr_text()[offset:]):
                reload_unsupported = True
                break
            msg = None
        if reload_unsupported:
            print("     SKIP reload part: ferry logs that reload is not implemented", flush=True)
        else:
            f.check(msg is not None, f"no RELOADING after SIGHUP; seen: {ns.seen}")
            after = time.monotonic_ns() // 1000
            f.check(msg["RELOADING"] == "1", f"RELOADING={msg['RELOADING']}")
            f.check("MONOTONIC_USEC" in msg, f"RELOADING without MONOTONIC_USEC: {msg}")
            usec = int(msg["MONOTONIC_USEC"])
            f.check(before <= usec <= after,
                    f"MONOTONIC_USEC={usec} not within [{before}, {after}] (CLOCK_MONOTONIC, us)")
            ready2 = ns.wait_for("READY", 10, f)
            f.check(ready2["READY"] == "1", f"READY={ready2['READY']} after the reload")
            with H.tls_connect(f.port(), CTX, timeout=H.bound(10)) as s:
                s.sendall(b"ECHO\nagain")
                f.check(H.recv_exact(s, 5) == b"again", "echo after the reload failed")

        f.stop(signal.SIGTERM, timeout=10)
        stopping = ns.wait_for("STOPPING", 2, f)
        f.check(stopping["STOPPING"] == "1", f"STOPPING={stopping['STOPPING']}")
        # Nothing after STOPPING=1 may say READY again.
        while ns.next(0.1) is not None:
            pass
        keys = ["READY", "STOPPING"] if reload_unsupported else \
            ["READY", "RELOADING", "READY", "STOPPING"]
        idx = order_of(ns.seen, keys)
        f.check(None not in idx, f"expected {keys} in this order; seen: {ns.seen}")
        last_ready = max(i for i, m in enumerate(ns.seen) if "READY" in m)
        f.check(last_ready < idx[-1], f"READY after STOPPING; seen: {ns.seen}")
    finally:
        f.kill()
        ns.close()


@S.test
def notify_status_and_watchdog():
    """WATCHDOG=1 at half of WATCHDOG_USEC; STATUS= with the number of active connections."""
    ns = NotifySocket()
    f = H.Ferry(tmp, [H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key)],
                workers=1, name="watchdog")
    try:
        # No WATCHDOG_PID: the variables are meant for the process that reads them.
        start_with_env(f, {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "1000000"})
        ns.wait_for("READY", 5, f)
        t0 = time.monotonic()
        ns.wait_for("WATCHDOG", 3, f)
        ns.wait_for("WATCHDOG", 3, f)
        took = time.monotonic() - t0
        f.check(took < H.bound(2.5), f"two WATCHDOG=1 took {took:.1f}s with WATCHDOG_USEC=1s")
        with H.tls_connect(f.port(), CTX, timeout=H.bound(10)) as s:
            s.sendall(b"ECHO\nx")
            f.check(H.recv_exact(s, 1) == b"x", "echo failed")
            deadline = time.monotonic() + H.bound(15)
            status = None
            while time.monotonic() < deadline:
                msg = ns.wait_for("STATUS", 15, f)
                status = msg["STATUS"]
                if re.search(r"\b1 active connection\b", status):
                    break
            else:
                f.fail(f"no STATUS= with 1 active connection within {H.bound(15)}s; "
                       f"last: {status!r}")
        f.stop(signal.SIGTERM, timeout=10)
    finally:
        f.kill()
        ns.close()


# ---- socket activation ---------------------------------------------------------------------


class ActivatedFerry(H.Ferry):
    """ferry started by systemd-socket-activate, which listens on `ports` (named `names`) and
    execs ferry in place (same PID) when the first connection arrives."""

    def __init__(self, dir, services, ports, names, env=None, **kw):
        super().__init__(dir, services, **kw)
        self.ports, self.names, self.env = ports, names, dict(env or {})

    def argv(self):
        listen = [a for p in self.ports for a in ("-l", f"127.0.0.1:{p}")]
        # systemd-socket-activate passes only a few variables (PATH, TERM, ...) to the program:
        # hand over the notify socket and the sanitizer options explicitly.
        env = [f"--setenv={k}={v}" for k, v in self.env.items()]
        env += [f"--setenv={k}" for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")
                if k in os.environ]
        return ["systemd-socket-activate", *listen, f"--fdname={':'.join(self.names)}", *env,
                H.FERRY_BIN, "--config", self.config_path]

    def spawn(self):
        H._ferries.append(self)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.started_at = time.time()
            self.proc = H.spawn(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        for p in self.ports:
            if not wait_listening(p, H.bound(10), self.proc):
                self.fail(f"systemd-socket-activate is not listening on {p}")
        return self


def wait_listening(port, timeout, proc):
    """Wait for a listening socket on 127.0.0.1:port without connecting to it (a connection
    would start ferry): look it up in /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with open("/proc/net/tcp") as f:
            for line in f.read().splitlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":  # TCP_LISTEN
                    return True
        time.sleep(0.05)
    return False


def echo_through(port, payload, timeout=10):
    with H.tls_connect(port, CTX, timeout=H.bound(timeout)) as s:
        s.sendall(b"ECHO\n" + payload)
        return H.recv_exact(s, len(payload))


@S.test
def socket_activation():
    need_tool("systemd-socket-activate")
    web, admin = H.free_port(), H.free_port()
    services = [
        H.service("web", 0, backend.port, certs.ec_crt, certs.ec_key),
        H.service("admin", 0, backend.port, certs.rsa_crt, certs.rsa_key),
    ]
    services[0]["accept"] = "systemd:web"
    services[1]["accept"] = "systemd:admin"
    ns = NotifySocket()
    f = ActivatedFerry(tmp, services, [web, admin], ["web", "admin"],
                       env={"NOTIFY_SOCKET": ns.path}, workers=2, name="activated")
    try:
        # The unit's ExecStartPre: --check accepts the systemd: addresses without sockets.
        r = H.run([H.FERRY_BIN, "--check", "--config", f.config_path], check=False, timeout=30)
        assert r.returncode == 0, f"--check: exit {r.returncode}\n{r.stderr.decode()}"
        assert "systemd:web" in r.stdout.decode(), r.stdout.decode()

        f.spawn()

        # The first connection arrives before ferry runs (it starts it) and is not lost.
        result = {}

        def first():
            try:
                result["data"] = echo_through(web, b"first", timeout=20)
            except Exception as e:  # noqa: BLE001
                result["error"] = repr(e)

        t = threading.Thread(target=first)
        t.start()
        f.wait_log(r"^\S+ info ferry \S+ ready: ", timeout=10)
        t.join(H.bound(20))
        f.check(result.get("data") == b"first", f"first connection: {result}")
        ns.wait_for("READY", 5, f)
        f.check(os.environ.get("LISTEN_FDS") is None, "test environment leaked LISTEN_FDS")

        # Both inherited sockets serve, each with its own certificate, on both workers.
        for i in range(8):
            f.check(echo_through(web, b"web%d" % i) == b"web%d" % i, "echo via systemd:web")
            f.check(echo_through(admin, b"adm%d" % i) == b"adm%d" % i, "echo via systemd:admin")
        for port, crt in ((web, certs.ec_crt), (admin, certs.rsa_crt)):
            with open(crt) as pem, H.tls_connect(port, CTX, timeout=H.bound(10)) as s:
                f.check(s.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(pem.read()),
                        f"port {port} did not present {os.path.basename(crt)}")
        f.wait_log(r"service web: accept .*systemd", timeout=1)
        f.stop(signal.SIGTERM, timeout=10)
    finally:
        f.kill()
        ns.close()


@S.test
def socket_activation_missing_name():
    """accept = "systemd:NAME" without such an inherited socket: exit 1 and say why."""
    need_tool("systemd-socket-activate")
    port = H.free_port()
    svc = H.service("web", 0, backend.port, certs.ec_crt, certs.ec_key)
    svc["accept"] = "systemd:nosuch"
    f = ActivatedFerry(tmp, [svc], [port], ["web"], workers=1, name="activated-missing")
    try:
        f.spawn()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            pass
        rc = f.wait_exit(10)
        f.check(rc == 1, f"exit code {rc}, expected 1")
        f.check(re.search(r"nosuch", f.stderr_text()) is not None,
                "the error does not name the missing socket")
    finally:
        f.kill()


if __name__ == "__main__":
    S.main()
