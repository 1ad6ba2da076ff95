#!/usr/bin/env python3
"""Reload (SIGHUP), certificate file watching and graceful stop (SIGTERM drain).

- reload under load: continuous client connections and a long-lived connection across 20
  SIGHUPs that alternate between two certificates; zero failures, bytes hash-checked
- a broken config / a missing key on reload: the old configuration keeps serving; log + metrics
- listener diff: services added, reordered and removed by reload; unchanged ports never refuse
- watch_files: replacing the certificate files is picked up without a signal (and not when off)
- drain: a transfer in progress at SIGTERM completes; new connections are refused; exit 0;
  shutdown_timeout cuts a stalled connection; a second SIGTERM closes at once
"""

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend, source_digest  # noqa: E402

S = H.Suite("reload")
tmp = H.make_temp_dir()
backend = Backend().start()

RELOAD_RE = r"reload (done: \d+ services?|failed: still running the previous configuration)$"


class Cert:
    def __init__(self, dir, cn):
        self.cn = cn
        self.crt = os.path.join(dir, f"{cn}.crt")
        self.key = os.path.join(dir, f"{cn}.key")
        H.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", self.key, "-out", self.crt, "-days", "365",
               "-subj", f"/CN={cn}", "-addext", H.SAN])


# Certificates live in their own directory: the config files (rewritten by every test) are not
# in a directory ferry watches.
CERT_DIR = os.path.join(tmp, "certs")
os.mkdir(CERT_DIR)
A = Cert(CERT_DIR, "ferry-a")
B = Cert(CERT_DIR, "ferry-b")
CTX = H.client_context(A.crt)
CTX.load_verify_locations(B.crt)


# --------------------------------------------------------------------------------------------
# helpers


def svc(name, port, cert, key=None, **extra):
    return H.service(name, port, backend.port, cert.crt if isinstance(cert, Cert) else cert,
                     key if key is not None else (cert.key if isinstance(cert, Cert) else None),
                     **extra)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return H.toml_str(v)


def config_text(f, services, workers=2, **glob):
    """H.config_text plus extra [global] keys (shutdown_timeout, watch_files)."""
    text = H.config_text(services, f.metrics_port, workers)
    extra = "".join(f"{k} = {toml_value(v)}\n" for k, v in glob.items())
    return text.replace("\n\n", "\n" + extra + "\n", 1)


def write_config(f, services, workers=2, **glob):
    text = config_text(f, services, workers, **glob)
    tmp_path = f.config_path + ".tmp"
    with open(tmp_path, "w") as out:
        out.write(text)
    os.replace(tmp_path, f.config_path)
    f.services = services
    return text


def new_ferry(name, services, metrics=True, **glob):
    f = H.Ferry(tmp, services, workers=2, metrics=metrics, name=name)
    write_config(f, services, **glob)
    return f


def reload(f, services=None, expect_ok=True, **glob):
    """Optionally rewrite the config, send SIGHUP, wait for the outcome. Returns the log offset
    from before the signal."""
    if services is not None:
        write_config(f, services, **glob)
    off = f.log_offset()
    f.send_signal(signal.SIGHUP)
    m = f.wait_log(RELOAD_RE, timeout=10, start=off)
    ok = m.group(1).startswith("done")
    f.check(ok == expect_ok, f"reload: expected {'success' if expect_ok else 'failure'}, "
                             f"got {m.group(0)!r}")
    return off


def cn(s):
    subject = s.getpeercert()["subject"]
    return dict(rdn[0] for rdn in subject)["commonName"]


def echo_cn(port, payload=None):
    """One new connection: echo a random payload, return the server certificate's CN."""
    payload = payload if payload is not None else os.urandom(random.randint(1, 2048))
    with H.tls_connect(port, CTX, timeout=H.bound(10)) as s:
        s.sendall(b"ECHO\n" + payload)
        got = H.recv_exact(s, len(payload))
        if got != payload:
            raise AssertionError(f"echo mismatch: sent {len(payload)} bytes, got {len(got)}")
        return cn(s)


def wait_cn(f, port, want, timeout=2):
    """New connections present `want` (3 in a row) within the bound. Returns seconds taken."""
    start = time.monotonic()
    deadline = start + H.bound(timeout)
    streak, last = 0, None
    while True:
        try:
            last = echo_cn(port)
        except (OSError, AssertionError) as e:
            f.fail(f"connection to {port} failed while waiting for CN={want}: {e!r}")
        streak = streak + 1 if last == want else 0
        if streak >= 3:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            f.fail(f"new connections to {port} still show CN={last} after {H.bound(timeout)}s, "
                   f"expected CN={want}")
        time.sleep(0.02)


def metrics_of(f):
    m = f.scrape()
    return {
        "success": H.mget(m, "ferry_config_reloads_total", result="success"),
        "failure": H.mget(m, "ferry_config_reloads_total", result="failure"),
        "last_ok": H.mget(m, "ferry_config_last_reload_successful"),
        "last_ts": H.mget(m, "ferry_config_last_reload_success_timestamp_seconds"),
    }


def refused(port, timeout=1):
    """True if a TCP connect to port is refused (ECONNREFUSED); False if it is accepted.
    A connect that lands in the backlog of a listening socket just as ferry closes it is reset
    by the kernel (ECONNRESET): the port is closing, which counts as refused too."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def truly_refused(port, timeout=2.0):
    """Refused (RST to the SYN): no listener left. A reset after the connection was made only
    says it hit a listener as that one closed; with several workers another may still be open."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def wait_refused(f, port, timeout, what):
    deadline = time.monotonic() + H.bound(timeout)
    while not truly_refused(port):
        if time.monotonic() >= deadline:
            f.fail(f"{what}: port {port} still accepts connections after {H.bound(timeout)}s")
        time.sleep(0.01)
    for _ in range(5):  # and stays closed
        f.check(refused(port), f"{what}: port {port} accepted a connection again")


def finish(f, timeout=10):
    """Graceful stop at the end of a test: exit 0 (metrics shutdown adds ~2 s)."""
    f.stop(signal.SIGTERM, timeout=timeout)


class Prober:
    """A thread that opens, checks (echo) and closes connections to `port` until stopped."""

    def __init__(self, port, pause=0.0):
        self.port = port
        self.pause = pause
        self.ok = 0
        self.failures = []  # (seconds since start, repr of the error)
        self.seen = []  # (monotonic time, CN)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        rnd = random.Random()
        while not self._stop.is_set() and len(self.failures) < 100:
            t = time.monotonic()
            try:
                name = echo_cn(self.port, rnd.randbytes(rnd.randint(1, 4096)))
                self.ok += 1
                self.seen.append((t, name))
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append((round(t - self._t0, 3), repr(e)))
            if self.pause:
                time.sleep(self.pause)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=H.bound(30))
        if self._thread.is_alive():
            raise AssertionError("prober thread did not stop")


# --------------------------------------------------------------------------------------------
# reload


@S.test
def reload_under_load():
    duration = 10 if H.SLOWDOWN > 1 else 20
    n_reloads = 20
    port = H.free_port()
    f = new_ferry("load", [svc("web", port, A)])
    f.start()
    stop = threading.Event()
    probers = []
    try:
        # The long connection: ECHO ping-pong with random chunks for the whole test.
        long_conn = H.tls_connect(port, CTX, timeout=H.bound(10))
        f.check(cn(long_conn) == A.cn, "long connection: wrong certificate at start")
        long_conn.sendall(b"ECHO\n")
        state = {"rounds": 0, "bytes": 0, "error": None}
        sent_h, recv_h = hashlib.sha256(), hashlib.sha256()

        def long_loop():
            rnd = random.Random(4)
            try:
                while not stop.is_set():
                    chunk = rnd.randbytes(rnd.randint(1, 1 << 16))
                    long_conn.sendall(chunk)
                    sent_h.update(chunk)
                    got = H.recv_exact(long_conn, len(chunk))
                    recv_h.update(got)
                    if got != chunk:
                        state["error"] = (f"round {state['rounds']}: sent {len(chunk)} bytes, "
                                          f"got {len(got)} (or different bytes)")
                        return
                    state["rounds"] += 1
                    state["bytes"] += len(chunk)
                    time.sleep(0.005)
            except Exception as e:  # noqa: BLE001
                state["error"] = f"round {state['rounds']}: {e!r}"

        long_thread = threading.Thread(target=long_loop, daemon=True)
        long_thread.start()
        probers = [Prober(port), Prober(port)]

        t0 = time.monotonic()
        interval = duration / (n_reloads + 1)
        rounds_at_reload = []
        for i in range(1, n_reloads + 1):
            time.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            cert = B if i % 2 else A
            reload(f, [svc("web", port, cert)])
            rounds_at_reload.append(state["rounds"])
            f.check(state["error"] is None, f"long connection broke at reload {i}: "
                                            f"{state['error']}")
            # New connections get the certificate just configured.
            wait_cn(f, port, cert.cn)
        time.sleep(max(0.0, t0 + duration - time.monotonic()))
        time.sleep(0.2)  # the long connection does a few more rounds after the last reload
        stop.set()
        for p in probers:
            p.stop()
        long_thread.join(timeout=H.bound(30))
        f.check(not long_thread.is_alive(), "long connection thread did not stop")

        failures = [x for p in probers for x in p.failures]
        ok = sum(p.ok for p in probers)
        f.check(not failures, f"{len(failures)} failed connections during reloads "
                              f"(of {ok + len(failures)}); first: {failures[:5]}")
        f.check(ok >= 100, f"only {ok} connections checked in {duration}s")
        seen = {name for p in probers for _, name in p.seen}
        f.check(seen == {A.cn, B.cn}, f"probers saw certificates {seen}")

        f.check(state["error"] is None, f"long connection: {state['error']}")
        f.check(sent_h.digest() == recv_h.digest(), "long connection: sha256 mismatch")
        f.check(state["rounds"] > rounds_at_reload[-1],
                "long connection made no progress after the last reload")
        stalled = [i + 1 for i in range(1, len(rounds_at_reload))
                   if rounds_at_reload[i] <= rounds_at_reload[i - 1]]
        f.check(not stalled, f"long connection made no progress between reloads {stalled}")
        f.check(cn(long_conn) == A.cn, "long connection's certificate changed")
        print(f"  {ok} connections, long connection: {state['rounds']} rounds, "
              f"{state['bytes']} bytes", flush=True)
        # Still the same connection: one more round trip, then end it.
        long_conn.sendall(b"bye")
        f.check(H.recv_exact(long_conn, 3) == b"bye", "long connection: final echo failed")
        long_conn.close()

        # Final certificate: 20 reloads alternate B, A, ..., ending with A.
        final = B if n_reloads % 2 else A
        wait_cn(f, port, final.cn)
        m = metrics_of(f)
        f.check(m["success"] == n_reloads and m["failure"] == 0 and m["last_ok"] == 1,
                f"reload metrics after {n_reloads} reloads: {m}")
        text = f.stderr_text()
        f.check(len(re.findall(r"reloading configuration from .* \(SIGHUP\)$", text, re.M))
                == n_reloads, "expected one 'reloading configuration ... (SIGHUP)' line each")
        finish(f)
    finally:
        stop.set()
        for p in probers:
            p._stop.set()
        f.kill()


@S.test
def reload_failures_keep_old_config():
    port = H.free_port()
    f = new_ferry("fail", [svc("web", port, A)])
    f.start()
    try:
        m0 = metrics_of(f)
        f.check(m0["last_ok"] == 1 and m0["success"] == 0 and m0["failure"] == 0,
                f"metrics at start: {m0}")
        f.check(abs(m0["last_ts"] - time.time()) < 60,
                f"last_reload_success_timestamp at start: {m0['last_ts']}")
        held = H.tls_connect(port, CTX, timeout=H.bound(10))
        held.sendall(b"ECHO\n")
        path = re.escape(f.config_path)

        def held_echo(what):
            held.sendall(what.encode())
            f.check(H.recv_exact(held, len(what)) == what.encode(),
                    f"established connection broke: {what}")

        # 1. Unknown key (and a certificate change that must not be applied).
        text = write_config(f, [svc("web", port, B, frobnicate="yes")])
        line = text.splitlines().index('frobnicate = "yes"') + 1
        off = reload(f, expect_ok=False)
        log = f.stderr_text()[off:]
        f.check(re.search(r"^\S+ error reload failed: %s:%d:1: service\[0\]\.frobnicate: "
                          r"unknown key$" % (path, line), log, re.M),
                f"no 'reload failed: {f.config_path}:{line}:1: service[0].frobnicate: unknown "
                f"key' line")
        f.check(re.search(r"^\S+ error reload failed: still running the previous "
                          r"configuration$", log, re.M), "no 'still running' error line")
        m = metrics_of(f)
        f.check(m["last_ok"] == 0 and m["failure"] == 1 and m["success"] == 0,
                f"metrics after the broken config: {m}")
        f.check(echo_cn(port) == A.cn, "after the broken config: not the old certificate")
        held_echo("after-broken-config")

        # 2. A key file that does not exist.
        missing = os.path.join(tmp, "missing.key")
        text = write_config(f, [svc("web", port, B.crt, missing)])
        line = text.splitlines().index(f"key = {H.toml_str(missing)}") + 1
        off = reload(f, expect_ok=False)
        log = f.stderr_text()[off:]
        f.check(re.search(r"^\S+ error reload failed: %s:%d:\d+: service\[0\]\.key: .+$"
                          % (path, line), log, re.M),
                f"no 'reload failed: {f.config_path}:{line}:COL: service[0].key: ...' line")
        m = metrics_of(f)
        f.check(m["last_ok"] == 0 and m["failure"] == 2 and m["success"] == 0,
                f"metrics after the missing key: {m}")
        f.check(m["last_ts"] == m0["last_ts"], "a failed reload moved the success timestamp")
        f.check(echo_cn(port) == A.cn, "after the missing key: not the old certificate")
        held_echo("after-missing-key")

        # 3. A good reload: back to 1, the success timestamp moves (it has 1 s resolution).
        time.sleep(max(0.0, m0["last_ts"] + 1.2 - time.time()))
        reload(f, [svc("web", port, B)])
        m = metrics_of(f)
        f.check(m["last_ok"] == 1 and m["failure"] == 2 and m["success"] == 1,
                f"metrics after the good reload: {m}")
        f.check(m["last_ts"] > m0["last_ts"] and abs(m["last_ts"] - time.time()) < 10,
                f"success timestamp did not move: {m0['last_ts']} -> {m['last_ts']}")
        wait_cn(f, port, B.cn)
        held_echo("after-good-reload")
        held.close()
        finish(f)
    finally:
        f.kill()


@S.test
def listener_diff():
    p1, p2 = H.free_port(), H.free_port()
    web, api = svc("web", p1, A), svc("api", p2, B)
    f = new_ferry("diff", [web])
    f.start()
    prober = None
    try:
        f.check(refused(p2), f"port {p2} accepts before it is configured")
        prober = Prober(p1, pause=0.002)

        # Add a service on a new port.
        reload(f, [web, api])
        deadline = time.monotonic() + H.bound(2)
        while True:
            try:
                name = echo_cn(p2)
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    f.fail(f"added service on port {p2} not reachable after {H.bound(2)}s: {e!r}")
                time.sleep(0.02)
        f.check(name == B.cn, f"added service: CN={name}, expected {B.cn}")
        held = H.tls_connect(p2, CTX, timeout=H.bound(10))
        held.sendall(b"ECHO\nheld")
        f.check(H.recv_exact(held, 4) == b"held", "connection to the added service")

        # Reorder: both addresses unchanged, both sockets kept; each port keeps its service.
        reload(f, [api, web])
        for port, name in ((p1, "web"), (p2, "api")):
            with H.tls_connect(port, CTX, timeout=H.bound(10)) as s:
                client_port = s.getsockname()[1]
                s.sendall(b"ECHO\nx")
                f.check(H.recv_exact(s, 1) == b"x", f"echo on port {port} after reorder")
            f.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=%s client=127\.0\.0\.1:%d .*"
                       r"end=done$" % (name, client_port), timeout=5)

        # Remove it: its port refuses; the established connection goes on.
        reload(f, [web])
        wait_refused(f, p2, 2, "removed service")
        held.sendall(b"still")
        f.check(H.recv_exact(held, 5) == b"still",
                "established connection of the removed service broke")
        held.close()

        # And add it back once more (the port is bound anew).
        reload(f, [web, api])
        deadline = time.monotonic() + H.bound(2)
        while True:
            try:
                echo_cn(p2)
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    f.fail(f"re-added service on port {p2} not reachable: {e!r}")
                time.sleep(0.02)
        reload(f, [web])
        wait_refused(f, p2, 2, "removed again")

        time.sleep(0.2)
        prober.stop()
        f.check(not prober.failures,
                f"port {p1} (unchanged) failed {len(prober.failures)} connections during the "
                f"reloads; first: {prober.failures[:5]}")
        f.check(prober.ok >= 5, f"only {prober.ok} probes of port {p1}")
        m = metrics_of(f)
        f.check(m["success"] == 5 and m["failure"] == 0, f"reload metrics: {m}")
        finish(f)
    finally:
        if prober is not None:
            prober._stop.set()
        f.kill()


# --------------------------------------------------------------------------------------------
# file watch


def live_files(name, cert):
    """A directory with live.crt/live.key, copies of `cert`."""
    d = os.path.join(tmp, name)
    os.mkdir(d)
    crt, key = os.path.join(d, "live.crt"), os.path.join(d, "live.key")
    shutil.copyfile(cert.crt, crt)
    shutil.copyfile(cert.key, key)
    return crt, key


def replace_files(crt, key, cert):
    """Write the new files next to the live ones, then rename them into place."""
    d = os.path.dirname(crt)
    new_crt, new_key = os.path.join(d, ".new.crt"), os.path.join(d, ".new.key")
    shutil.copyfile(cert.crt, new_crt)
    shutil.copyfile(cert.key, new_key)
    os.replace(new_key, key)
    os.replace(new_crt, crt)


@S.test
def file_watch_picks_up_new_certificate():
    port = H.free_port()
    crt, key = live_files("watch", A)
    f = new_ferry("watch", [svc("web", port, crt, key)])  # watch_files: the default (true)
    f.start()
    try:
        f.check(echo_cn(port) == A.cn, "not the initial certificate")
        time.sleep(0.2)
        off = f.log_offset()
        replace_files(crt, key, B)
        took = wait_cn(f, port, B.cn, timeout=2)
        print(f"  certificate replacement picked up after {took:.2f}s", flush=True)
        log = f.stderr_text()[off:]
        f.check(re.search(r"^\S+ info reloading configuration from %s \(certificate file "
                          r"changed\)$" % re.escape(f.config_path), log, re.M),
                "no 'reloading configuration ... (certificate file changed)' line")
        f.wait_log(r"reload done: 1 service$", start=off)
        m = metrics_of(f)
        f.check(m["success"] == 1 and m["failure"] == 0, f"reload metrics: {m}")

        # The same again, back to A: the watch survives the reload it triggered.
        off = f.log_offset()
        replace_files(crt, key, A)
        wait_cn(f, port, A.cn, timeout=2)
        f.wait_log(r"\(certificate file changed\)$", start=off)
        finish(f)
    finally:
        f.kill()


@S.test
def file_watch_off():
    port = H.free_port()
    crt, key = live_files("nowatch", A)
    f = new_ferry("nowatch", [svc("web", port, crt, key)], watch_files=False)
    f.start()
    try:
        f.check(echo_cn(port) == A.cn, "not the initial certificate")
        off = f.log_offset()
        replace_files(crt, key, B)
        time.sleep(H.bound(2))
        for _ in range(5):
            f.check(echo_cn(port) == A.cn,
                    "watch_files = false, yet the replaced certificate was loaded")
        f.check("certificate file changed" not in f.stderr_text()[off:],
                "watch_files = false, yet a file change triggered a reload")
        # A signal still reloads the files.
        reload(f)
        wait_cn(f, port, B.cn)
        finish(f)
    finally:
        f.kill()


# --------------------------------------------------------------------------------------------
# drain


def exit_code(f, timeout):
    rc = f.wait_exit(timeout)
    if rc is None:
        f.kill()
        f.fail(f"ferry did not exit within {H.bound(timeout)}s")
    return rc


@S.test
def drain_completes_transfer():
    n = 64 << 20
    port = H.free_port()
    f = new_ferry("drain", [svc("web", port, A)])
    f.start()
    try:
        s = H.tls_connect(port, CTX, timeout=H.bound(30))
        client_port = s.getsockname()[1]
        s.sendall(b"SOURCE %d\n" % n)
        h = hashlib.sha256()
        first = H.recv_exact(s, 1 << 20)  # the rest waits in ferry / the socket buffers
        h.update(first)
        f.check(len(first) == 1 << 20, "the transfer did not start")

        f.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        wait_refused(f, port, 1, "after SIGTERM")
        refused_after = time.monotonic() - t_term
        f.check(f.proc.poll() is None, "ferry exited with a transfer in progress")

        got = len(first) + H.recv_all(s, hasher=h)
        s.close()
        f.check(got == n, f"drained transfer: got {got} of {n} bytes")
        f.check(h.hexdigest() == source_digest(n), "drained transfer: sha256 mismatch")
        t_done = time.monotonic()
        rc = exit_code(f, 10)
        f.check(rc == 0, f"exit code {rc} after draining, expected 0")
        print(f"  refused {refused_after:.2f}s after SIGTERM; exit "
              f"{time.monotonic() - t_done:.2f}s after the transfer", flush=True)
        f.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .*"
                   r"to_client=%d .*end=done$" % (client_port, n), timeout=1)
    finally:
        f.kill()


@S.test
def drain_timeout_cuts_stalled_connection():
    port = H.free_port()
    f = new_ferry("stalled", [svc("web", port, A)], metrics=False, shutdown_timeout="1s")
    f.start()
    try:
        s = H.tls_connect(port, CTX, timeout=H.bound(10))
        client_port = s.getsockname()[1]
        s.sendall(b"ECHO\nidle")
        f.check(H.recv_exact(s, 4) == b"idle", "echo before SIGTERM")
        f.send_signal(signal.SIGTERM)
        cut = H.wait_eof(s, H.bound(3) + 2)
        s.close()
        f.check(cut is not None, f"stalled connection still open {H.bound(3) + 2}s after SIGTERM")
        f.check(0.8 <= cut <= H.bound(3),
                f"stalled connection cut {cut:.2f}s after SIGTERM; shutdown_timeout is 1s")
        print(f"  stalled connection cut after {cut:.2f}s", flush=True)
        rc = exit_code(f, 5)
        f.check(rc == 0, f"exit code {rc}, expected 0")
        f.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .*"
                   r"end=shutdown$" % client_port, timeout=1)
    finally:
        f.kill()


@S.test
def second_sigterm_closes_at_once():
    port = H.free_port()
    f = new_ferry("twice", [svc("web", port, A)], metrics=False)  # shutdown_timeout: 30s
    f.start()
    try:
        s = H.tls_connect(port, CTX, timeout=H.bound(10))
        client_port = s.getsockname()[1]
        s.sendall(b"ECHO\nopen")
        f.check(H.recv_exact(s, 4) == b"open", "echo before SIGTERM")
        f.send_signal(signal.SIGTERM)
        f.wait_log(r"SIGTERM: stopping", timeout=5)
        wait_refused(f, port, 1, "after SIGTERM")
        # Draining: the established connection still works, SIGHUP does not reload.
        off = f.log_offset()
        f.send_signal(signal.SIGHUP)
        s.sendall(b"draining")
        f.check(H.recv_exact(s, 8) == b"draining", "echo while draining")
        time.sleep(0.3)
        f.check(f.proc.poll() is None, "ferry exited while a connection was draining")
        f.check("reloading configuration" not in f.stderr_text()[off:],
                "SIGHUP while draining started a reload")

        t0 = time.monotonic()
        f.send_signal(signal.SIGTERM)
        cut = H.wait_eof(s, H.bound(5))
        s.close()
        f.check(cut is not None and cut <= H.bound(1.5),
                f"second SIGTERM: connection cut after {cut}s, expected at once")
        rc = exit_code(f, 5)
        f.check(rc == 0, f"exit code {rc} after a second SIGTERM, expected 0")
        took = time.monotonic() - t0
        f.check(took <= H.bound(3), f"second SIGTERM: exit took {took:.2f}s")
        f.wait_log(r"^\S+ info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d .*"
                   r"end=shutdown$" % client_port, timeout=1)
    finally:
        f.kill()
    backend.stop()


if __name__ == "__main__":
    S.main()
