"""Peers for the integration tests of issue 5: nginx and HAProxy as real PROXY-protocol
receivers and senders, backends on IPv6 and unix sockets, and a Python receiver that reads the
PROXY header ferry sends (with proxyproto.py) before echoing.

Everything is started as the current user with its own temp config, prefix, pid and log files,
on loopback ports, in the foreground, tracked by PID (harness.spawn) and killed at exit. Every
wait is bounded.

    ngx = Nginx(dir, "name", http="server { listen 127.0.0.1:%d proxy_protocol; ... }" % p,
                ports=[p]).start()
    hap = HAProxy(dir, "name", "frontend f\\n  bind 127.0.0.1:%d ...\\n" % p, ports=[p]).start()
    ngx.stop(); hap.stop()
"""

import os
import socket
import threading
import time

import harness as H
from backend import Backend

NGINX_BIN = "/usr/sbin/nginx"
HAPROXY_BIN = "/usr/sbin/haproxy"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


# --------------------------------------------------------------------------------------------
# waiting for a listener without connecting to it (a probe would be a connection the peer
# forwards to ferry)


def _listening_ports():
    """Ports in LISTEN state on this host (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def wait_listening(ports, timeout, proc=None):
    """Wait until every port in `ports` has a listening socket. True/False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if set(ports) <= _listening_ports():
            return True
        time.sleep(0.05)
    return False


class _Proc:
    """A peer process: its files live in its own directory; start() waits for its ports."""

    what = "peer"

    def __init__(self, dir, name, ports):
        self.dir = os.path.join(dir, name)
        os.makedirs(self.dir, exist_ok=True)
        # nginx/HAProxy run as the current user; the harness umask makes files private, which is
        # what we want (nobody else reads these).
        self.name = name
        self.ports = list(ports)
        self.proc = None
        self.out_path = os.path.join(self.dir, "output.log")

    def argv(self):
        raise NotImplementedError

    def output(self):
        text = ""
        for p in self.log_files():
            try:
                with open(p, "rb") as f:
                    text += f"--- {p} ---\n" + f.read().decode(errors="replace")[-4000:]
            except OSError:
                pass
        return text

    def log_files(self):
        return [self.out_path]

    def start(self, timeout=10):
        with open(self.out_path, "wb") as out:
            self.proc = H.spawn(self.argv(), stdin=H.subprocess.DEVNULL, stdout=out,
                                stderr=H.subprocess.STDOUT)
        if not wait_listening(self.ports, H.bound(timeout), self.proc):
            rc = self.proc.poll()
            self.stop()
            raise AssertionError(f"{self.what} {self.name} did not listen on {self.ports} within "
                                 f"{H.bound(timeout)}s (exit code {rc})\n{self.output()}")
        return self

    def stop(self):
        if self.proc is not None:
            H.kill_proc(self.proc)
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Nginx(_Proc):
    """nginx in the foreground, single process (master_process off: no user switch even as
    root), with a prefix, pid, temp paths and logs of its own. `http` / `stream` are the bodies
    of the http {} and stream {} blocks (the stream module is loaded when `stream` is given)."""

    what = "nginx"

    def __init__(self, dir, name, ports, http=None, stream=None):
        super().__init__(dir, name, ports)
        d = self.dir
        self.error_log = os.path.join(d, "error.log")
        self.access_log = os.path.join(d, "access.log")
        lines = []
        if stream is not None:
            lines.append(f"load_module {NGINX_STREAM_MODULE};")
        lines += [
            "master_process off;",
            "worker_processes 1;",
            f"pid {d}/nginx.pid;",
            f"error_log {self.error_log} info;",
            "events { worker_connections 512; }",
        ]
        if http is not None:
            lines += [
                "http {",
                f"  access_log {self.access_log};",
                f"  client_body_temp_path {d}/client_body;",
                f"  proxy_temp_path {d}/proxy;",
                f"  fastcgi_temp_path {d}/fastcgi;",
                f"  uwsgi_temp_path {d}/uwsgi;",
                f"  scgi_temp_path {d}/scgi;",
                http,
                "}",
            ]
        if stream is not None:
            lines += ["stream {", stream, "}"]
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def argv(self):
        return [NGINX_BIN, "-p", self.dir + "/", "-c", self.conf, "-e", self.error_log,
                "-g", "daemon off;"]

    def log_files(self):
        return [self.out_path, self.error_log]


class HAProxy(_Proc):
    """HAProxy in the foreground (-db) with a config of its own; `body` is everything after the
    global and defaults sections (frontends, backends, listens)."""

    what = "haproxy"

    def __init__(self, dir, name, ports, body, mode="tcp"):
        super().__init__(dir, name, ports)
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "global",
                "  maxconn 512",
                f"  pidfile {self.dir}/haproxy.pid",
                "  log stderr format short local0 info",
                "defaults",
                f"  mode {mode}",
                "  log global",
                "  timeout connect 5s",
                "  timeout client 30s",
                "  timeout server 30s",
                "",
                body,
            ]) + "\n")

    def argv(self):
        return [HAPROXY_BIN, "-f", self.conf, "-db"]


# ready-made configurations -------------------------------------------------------------------


def nginx_pp_http(dir, name, port, host="127.0.0.1"):
    """nginx HTTP on host:port that requires a PROXY header (v1 or v2) and answers every request
    with 200 "$proxy_protocol_addr:$proxy_protocol_port"."""
    listen = f"[{host}]" if ":" in host else host
    return Nginx(dir, name, [port], http=(
        "  server {\n"
        f"    listen {listen}:{port} proxy_protocol;\n"
        "    location / {\n"
        "      default_type text/plain;\n"
        '      return 200 "$proxy_protocol_addr:$proxy_protocol_port";\n'
        "    }\n"
        "  }"))


def nginx_pp_sender(dir, name, port, upstream_port, host="127.0.0.1"):
    """nginx stream proxy: plain TCP on host:port to 127.0.0.1:upstream_port, prefixed with a
    PROXY v1 header (`proxy_protocol on;`)."""
    listen = f"[{host}]" if ":" in host else host
    return Nginx(dir, name, [port], stream=(
        "  server {\n"
        f"    listen {listen}:{port};\n"
        f"    proxy_pass 127.0.0.1:{upstream_port};\n"
        "    proxy_protocol on;\n"
        "    proxy_connect_timeout 5s;\n"
        "    proxy_timeout 30s;\n"
        "  }"))


def haproxy_pp_http(dir, name, port, host="127.0.0.1"):
    """HAProxy HTTP on host:port with `accept-proxy` (v1 or v2 required), answering every request
    with 200 "%[src] %[fc_pp_authority]" (the client address and the AUTHORITY TLV)."""
    listen = f"[{host}]" if ":" in host else host
    return HAProxy(dir, name, [port], mode="http", body="\n".join([
        "frontend pp_in",
        f"  bind {listen}:{port} accept-proxy",
        '  http-request return status 200 content-type text/plain '
        'lf-string "%[src] %[fc_pp_authority]"',
    ]))


def haproxy_pp_sender(dir, name, port, upstream_port, host="127.0.0.1", version=2):
    """HAProxy TCP on host:port to 127.0.0.1:upstream_port with send-proxy(-v2)."""
    listen = f"[{host}]" if ":" in host else host
    send = "send-proxy-v2" if version == 2 else "send-proxy"
    return HAProxy(dir, name, [port], mode="tcp", body="\n".join([
        "listen pp_out",
        f"  bind {listen}:{port}",
        f"  server ferry 127.0.0.1:{upstream_port} {send}",
    ]))


# --------------------------------------------------------------------------------------------
# backends on other address families


class Backend6(Backend):
    """backend.Backend on [::1] (port 0 = ephemeral)."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.server_address = ("::1", self.server_address[1])
        super().server_bind()


class UnixBackend(Backend):
    """backend.Backend on a unix socket at `path`."""

    address_family = socket.AF_UNIX
    allow_reuse_address = False

    def __init__(self, path, **kw):
        self.path = path
        super().__init__(0, **kw)
        self.port = None

    def server_bind(self):
        self.server_address = self.path
        self.socket.bind(self.path)
        self.server_address = self.path

    def server_close(self):
        super().server_close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# a PROXY-protocol receiver


class ProxyReceiver:
    """A TCP server on 127.0.0.1 (threads) that reads a PROXY header with proxyproto.recv_header
    and then echoes everything after it. .records holds, per connection, a dict:
    {"header": proxyproto's parsed dict plus "src"/"dst" as (addr, port) tuples,
     "raw": the header's bytes, "error": why reading it failed, or None}.
    """

    def __init__(self, port=0, host="127.0.0.1", header_timeout=5):
        import proxyproto  # noqa: F401 - imported here: only the tests that need it have it
        self.proxyproto = proxyproto
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.header_timeout = header_timeout
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        rec = {"header": None, "raw": None, "error": None}
        with conn:
            conn.settimeout(H.bound(self.header_timeout))
            try:
                h, raw = self.proxyproto.recv_header(conn, H.bound(self.header_timeout))
                h["src"] = (h["src_addr"], h["src_port"])
                h["dst"] = (h["dst_addr"], h["dst_port"])
                rec["header"], rec["raw"] = h, raw
            except Exception as e:  # noqa: BLE001 - recorded for the test to report
                try:
                    peek = conn.recv(200, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except OSError:
                    peek = b""
                rec["error"] = f"{type(e).__name__}: {e} (first bytes: {peek[:120]!r})"
            with self.lock:
                self.records.append(rec)
            if rec["error"] is not None:
                return
            conn.settimeout(H.bound(30))
            try:
                while True:
                    b = conn.recv(1 << 16)
                    if not b:
                        break
                    conn.sendall(b)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def count(self):
        with self.lock:
            return len(self.records)

    def wait_records(self, n, timeout=5):
        """Wait until at least n connections have been recorded; returns the records."""
        deadline = time.monotonic() + H.bound(timeout)
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.records) >= n:
                    return list(self.records)
            time.sleep(0.02)
        with self.lock:
            return list(self.records)

    def close(self):
        self.stopping.set()
        self.lsock.close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# clients and log lines


def sock_connect(address, timeout=10, source=None):
    """A connected plain socket: address is (host, port) for IPv4/IPv6 or a unix socket path.
    source: a local IP to bind first (e.g. "127.0.0.2")."""
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(H.bound(timeout))
        try:
            s.connect(address)
        except BaseException:
            s.close()
            raise
        return s
    host, port = address
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(H.bound(timeout))
    try:
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def tls_connect(address, ctx, server_hostname="localhost", timeout=10, source=None,
                preamble=b"", session=None):
    """A handshaken ssl.SSLSocket to `address` (see sock_connect); `preamble` is sent in the
    clear first (a PROXY header)."""
    raw = sock_connect(address, timeout, source)
    try:
        if preamble:
            raw.sendall(preamble)
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def echo(address, ctx, payload=b"hello", server_hostname="localhost", **kw):
    """TLS to `address`, "ECHO" through ferry to a backend.py backend, check the echo.
    Returns the client's local address (sockname) and the TLS socket's details."""
    with tls_connect(address, ctx, server_hostname=server_hostname, **kw) as s:
        local = s.getsockname()
        s.sendall(b"ECHO\n" + payload)
        got = H.recv_exact(s, len(payload))
        info = {"local": local, "version": s.version(), "cipher": s.cipher()[0],
                "alpn": s.selected_alpn_protocol(), "session": s.session,
                "reused": s.session_reused}
    if got != payload:
        raise AssertionError(f"echo through {address}: sent {payload!r}, got {got!r}")
    return info


_ACCESS_RE = H.re.compile(r"^\S+ info \[(w\d+ c\d+)\] access (.*)$", H.re.M)


def access_lines(ferry, start=0):
    """Ferry's text access lines after log offset `start`, as dicts of their key=value fields
    (plus "conn": "wN cN")."""
    out = []
    for m in _ACCESS_RE.finditer(ferry.stderr_text(), start):
        d = dict(H.re.findall(r"(\w+)=(\S*)", m.group(2)))
        d["conn"] = m.group(1)
        out.append(d)
    return out


def wait_access(ferry, start, pred, timeout=5, what="access line"):
    """Wait for an access line (after `start`) for which pred(fields) holds; returns it."""
    deadline = time.monotonic() + H.bound(timeout)
    while True:
        for a in access_lines(ferry, start):
            if pred(a):
                return a
        if time.monotonic() >= deadline:
            lines = access_lines(ferry, start)
            ferry.fail(f"no {what} within {H.bound(timeout)}s; access lines since: "
                       f"{lines[-5:]}")
        time.sleep(0.05)


def client_addr(local):
    """A sockname as ferry writes it in `client=`: "127.0.0.1:41234" or "[::1]:41234"."""
    host, port = local[0], local[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def delta(before, after, name, **labels):
    return H.mget(after, name, **labels) - H.mget(before, name, **labels)
