#!/usr/bin/env python3
"""Logs (issue 4, point 6): `log_format = "json"` (one object per line, typed access fields),
journal mode (JOURNAL_STREAM names stderr: sd-daemon `<N>` prefixes, no timestamps) and
`access_log = false`."""

import json
import os
import re
import signal
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("logging")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
CTX = H.client_context(certs.ec_crt)
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ACCESS_FIELDS = {
    # name: accepted types (None: JSON null)
    "time": (str,), "level": (str,), "worker": (int,), "conn": (int,), "type": (str,),
    "service": (str,), "client_addr": (str,), "client_port": (int,), "sni": (str, None),
    "alpn": (str, None), "version": (str, None), "cipher": (str, None), "resumed": (bool,),
    "client_cert": (str, None), "backend": (str, None), "to_backend": (int,), "to_client": (int,),
    "handshake_s": (float, int, None), "duration_s": (float, int), "end": (str,),
}


class LogFerry(H.Ferry):
    """A Ferry with extra [global] keys and, optionally, JOURNAL_STREAM naming its stderr.

    The harness waits for the text "ready" line; in JSON or journal form that line looks
    different, so start() here waits for it in the configured form.
    """

    def __init__(self, name, global_keys=None, journal=None):
        super().__init__(tmp, [H.service("web", H.free_port(), backend.port, certs.ec_crt,
                                         certs.ec_key)], metrics=False, name=name)
        self.global_keys = global_keys or {}
        self.journal = journal  # None: unset; "match": stderr's dev:ino; else the literal value
        with open(self.config_path) as f:
            text = f.read()
        extra = "".join(f"{k} = {v}\n" for k, v in self.global_keys.items())
        with open(self.config_path, "w") as f:
            f.write(text.replace("[global]\n", "[global]\n" + extra, 1))

    def start(self, ready_timeout=10):
        H._ferries.append(self)
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            if self.journal == "match":
                st = os.fstat(err.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            elif self.journal is not None:
                env["JOURNAL_STREAM"] = self.journal
            self.started_at = time.time()
            self.proc = H.spawn(self.argv(), stdin=H.subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env)
        deadline = time.monotonic() + H.bound(ready_timeout)
        while not any(" ready: " in line for line in self.stderr_text().splitlines()):
            if self.proc.poll() is not None:
                self.fail(f"exited during start-up with code {self.proc.returncode}")
            if time.monotonic() >= deadline:
                self.fail(f"no 'ready' log line within {H.bound(ready_timeout)}s")
            time.sleep(0.02)
        return self

    def json_lines(self):
        """Every stderr line parsed with json.loads (fails on the first line that is not JSON)."""
        out = []
        for line in self.stderr_text().splitlines():
            if self.journal == "match":
                self.check(line.startswith("<"), f"no <N> prefix in journal mode: {line!r}")
                line = line[line.index(">") + 1:]
            try:
                obj = json.loads(line)
            except ValueError as e:
                self.fail(f"not a JSON line ({e}): {line!r}")
            self.check(isinstance(obj, dict), f"not a JSON object: {line!r}")
            out.append(obj)
        return out

    def wait_access(self, client_port, timeout=5):
        """The JSON access record of the connection from 127.0.0.1:client_port."""
        deadline = time.monotonic() + H.bound(timeout)
        while True:
            for obj in self.json_lines():
                if obj.get("type") == "access" and obj.get("client_port") == client_port:
                    return obj
            if time.monotonic() >= deadline:
                self.fail(f"no JSON access line for client port {client_port}")
            time.sleep(0.05)


def echo_exchange(port, ctx, payload, session=None):
    """ECHO through ferry with a clean end both ways. Returns (client port, TLS object, echoed,
    session)."""
    t = H.MemTLS(port, ctx, timeout=H.bound(30), session=session)
    try:
        client_port = t.sock.getsockname()[1]
        t.sendall(b"ECHO\n" + payload)
        got = bytearray()
        while len(got) < len(payload):
            b = t.recv()
            if not b:
                break
            got += b
        t.close_write()
        while t.recv():
            pass
        return client_port, t.obj, bytes(got), t.obj.session
    finally:
        t.close()


def check_types(f, obj):
    for name, types in ACCESS_FIELDS.items():
        f.check(name in obj, f"access record without {name!r}: {obj}")
        v = obj[name]
        ok = (v is None and None in types) or any(
            t is not None and isinstance(v, t) and not (t is int and isinstance(v, bool))
            for t in types)
        f.check(ok, f"access field {name} = {v!r} has the wrong type: {obj}")


@S.test
def json_lines_and_access_fields():
    f = LogFerry("json", {"log_format": '"json"'}).start()
    try:
        payload = os.urandom(5000)
        ctx = H.client_context(certs.ec_crt)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        client_port, obj, got, _ = echo_exchange(f.port(), ctx, payload)
        f.check(got == payload, f"echo returned {len(got)} bytes, sent {len(payload)}")
        f.check(obj.selected_alpn_protocol() is None, "ferry selected an ALPN protocol")
        r = f.wait_access(client_port)
        check_types(f, r)
        expected = {
            "level": "info", "type": "access", "service": "web", "client_addr": "127.0.0.1",
            "client_port": client_port, "sni": "localhost", "alpn": None,
            "version": obj.version(), "cipher": H.iana_cipher_name(obj.cipher()[0]),
            "resumed": False, "client_cert": None, "backend": f"127.0.0.1:{backend.port}",
            "to_backend": len(payload) + 5, "to_client": len(payload), "end": "done",
        }
        for k, v in expected.items():
            f.check(r[k] == v, f"access field {k}: {r[k]!r}, expected {v!r}: {r}")
        f.check(TIME_RE.match(r["time"]), f"time {r['time']!r}")
        f.check(0 < r["handshake_s"] <= r["duration_s"] < H.bound(30),
                f"handshake_s {r['handshake_s']} / duration_s {r['duration_s']}")
        # Every line is JSON with time, level and either a message or a type.
        lines = f.json_lines()
        f.check(any(o.get("msg", "").startswith("ferry ") and " ready: " in o["msg"]
                    for o in lines), "no JSON ready line")
        for o in lines:
            f.check(TIME_RE.match(o.get("time", "")), f"line without a good time: {o}")
            f.check(o.get("level") in ("error", "warn", "info", "debug"), f"level: {o}")
            f.check(isinstance(o.get("msg"), str) or o.get("type") == "access",
                    f"neither msg nor type: {o}")
        # A failed handshake: nothing negotiated, unknowns are null.
        with H.socket.create_connection(("127.0.0.1", f.port()), timeout=H.bound(5)) as raw:
            bad_port = raw.getsockname()[1]
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            H.wait_eof(raw, H.bound(5))
        r = f.wait_access(bad_port)
        check_types(f, r)
        for k, v in {"end": "handshake_failed", "version": None, "cipher": None, "sni": None,
                     "alpn": None, "handshake_s": None, "resumed": False,
                     "to_backend": 0, "to_client": 0}.items():
            f.check(r[k] == v, f"failed handshake: {k} = {r[k]!r}, expected {v!r}: {r}")
        f.stop()
    finally:
        f.kill()


@S.test
def json_resumed_session():
    f = LogFerry("resume", {"log_format": '"json"'}).start()
    try:
        for maxv in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = H.client_context(certs.ec_crt, max_version=maxv)
            port1, _, _, session = echo_exchange(f.port(), ctx, b"first")
            f.check(session is not None, f"{maxv.name}: no session to resume")
            port2, obj, got, _ = echo_exchange(f.port(), ctx, b"second", session=session)
            f.check(got == b"second", f"{maxv.name}: echo failed")
            f.check(obj.session_reused, f"{maxv.name}: the client did not resume")
            r1, r2 = f.wait_access(port1), f.wait_access(port2)
            f.check(r1["resumed"] is False, f"{maxv.name}: first connection resumed: {r1}")
            f.check(r2["resumed"] is True, f"{maxv.name}: resumed connection: {r2}")
            f.check(r2["version"] == obj.version(), f"{maxv.name}: version {r2['version']}")
            f.check(r2["to_backend"] == 11 and r2["to_client"] == 6,
                    f"{maxv.name}: byte counts {r2['to_backend']}/{r2['to_client']}")
        f.stop()
    finally:
        f.kill()


@S.test
def journal_mode_text():
    f = LogFerry("journal", journal="match").start()
    try:
        client_port, _, got, _ = echo_exchange(f.port(), CTX, b"hello")
        f.check(got == b"hello", "echo failed")
        f.wait_log(r"^<6>info \[w\d+ c\d+\] access service=web client=127\.0\.0\.1:%d "
                   r"version=TLSv1\.3 cipher=\S+ sni=localhost alpn=- resumed=no client_cert=- "
                   r"backend=127\.0\.0\.1:%d to_backend=10 to_client=5 handshake=\d+\.\d+s "
                   r"duration=\d+\.\d+s end=done$" % (client_port, backend.port))
        f.stop()
        lines = f.stderr_text().splitlines()
        f.check(any(re.match(r"^<6>info ferry \S+ ready: ", line) for line in lines),
                "no '<6>info ferry ... ready:' line")
        for line in lines:
            f.check(re.match(r"^<[3467]>(error|warn|info|debug) ", line),
                    f"line without a matching sd-daemon prefix: {line!r}")
            f.check(not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line),
                    f"timestamp in journal mode: {line!r}")
    finally:
        f.kill()


@S.test
def journal_mode_json():
    f = LogFerry("journal-json", {"log_format": '"json"'}, journal="match").start()
    try:
        client_port, _, _, _ = echo_exchange(f.port(), CTX, b"hello")
        r = f.wait_access(client_port)
        f.check("time" not in r, f"time in a journal-mode JSON line: {r}")
        f.check(r["end"] == "done" and r["to_client"] == 5, f"access record {r}")
        for line in f.stderr_text().splitlines():
            f.check(line.startswith("<6>{") or re.match(r"^<[347]>\{", line),
                    f"journal JSON line without its priority: {line!r}")
        f.check(all("time" not in o for o in f.json_lines()), "time in journal mode")
        f.stop()
    finally:
        f.kill()


@S.test
def journal_stream_of_another_file_is_ignored():
    """JOURNAL_STREAM inherited but stderr redirected elsewhere: plain text with timestamps."""
    f = LogFerry("not-journal", journal="1:2").start()
    try:
        f.wait_log(r"^\d{4}-\d\d-\d\dT\S+Z info ferry \S+ ready: ")
        f.check(not re.search(r"^<\d>", f.stderr_text(), re.M), "sd-daemon prefix without journal")
        f.stop()
    finally:
        f.kill()


@S.test
def access_log_off():
    f = LogFerry("no-access", {"access_log": "false"}).start()
    try:
        _, _, got, _ = echo_exchange(f.port(), CTX, b"hello")
        f.check(got == b"hello", "echo failed")
        with H.socket.create_connection(("127.0.0.1", f.port()), timeout=H.bound(5)) as raw:
            bad_port = raw.getsockname()[1]
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            H.wait_eof(raw, H.bound(5))
        # Other info lines are still written: the failed handshake's own line.
        f.wait_log(r"^\S+ info \[w\d+ c\d+\] handshake failed: service=web "
                   r"client=127\.0\.0\.1:%d " % bad_port)
        f.stop(signal.SIGTERM)
        text = f.stderr_text()
        f.check(re.search(r"^\S+ info ferry \S+ ready: ", text, re.M), "no ready line")
        f.check(not re.search(r" access ", text), "an access line with access_log = false")
    finally:
        f.kill()


@S.test
def private_keys_are_never_logged():
    """At log_level = "debug", through handshakes, a failed handshake, a reload and a reload
    that fails on a key that does not match its certificate, no line carries key material: no
    PEM marker, no line of the key's base64 body."""
    f = LogFerry("no-keys")
    with open(f.config_path) as c:
        text = c.read()
    with open(f.config_path, "w") as c:
        c.write(text.replace('log_level = "info"', 'log_level = "debug"', 1))
    f.start()
    try:
        _, _, got, _ = echo_exchange(f.port(), CTX, b"hello")
        f.check(got == b"hello", "echo failed")
        with H.socket.create_connection(("127.0.0.1", f.port()), timeout=H.bound(5)) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello
            H.wait_eof(raw, H.bound(5))
        f.send_signal(signal.SIGHUP)
        f.wait_log(r"reloading configuration")
        # A reload that fails: the service's key replaced by another one.
        os.makedirs(os.path.join(tmp, "other-keys"), exist_ok=True)
        other = H.Certs(os.path.join(tmp, "other-keys"))
        with open(f.config_path) as c:
            text = c.read()
        with open(f.config_path, "w") as c:
            c.write(text.replace(certs.ec_key, other.ec_key))
        off = f.log_offset()
        f.send_signal(signal.SIGHUP)
        f.wait_log(r"reload failed", start=off)
        f.stop(signal.SIGTERM)
        log = f.stderr_text()
        body = []
        for path in (certs.ec_key, other.ec_key):
            with open(path) as k:
                body += [line.strip() for line in k if line.strip() and "-----" not in line]
        f.check("PRIVATE KEY" not in log, "a PEM private key marker in the log")
        leaked = [b for b in body if len(b) >= 16 and b in log]
        f.check(not leaked, f"{len(leaked)} lines of a private key appear in the log")
    finally:
        f.kill()


if __name__ == "__main__":
    try:
        S.main()
    finally:
        backend.stop()
