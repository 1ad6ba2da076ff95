"""Integration-test harness for ferry: certificates, configs, the daemon process, metrics.

Python 3 standard library only. Everything this module starts is tracked by PID and killed at
exit (atexit), and every temp dir it creates is removed, also when a test fails. Every wait is
bounded in time.

Environment:
  FERRY_BIN       the ferry binary (default: <repo>/build/ferry)
  FERRY_STANDIN   "stunnel": run stunnel4 instead of ferry (data-path tests only; no metrics)
  FERRY_SLOWDOWN  multiply time bounds by this (default 1; use 3 for sanitizer builds)
"""

import atexit
import calendar
import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import select
import tempfile
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
FERRY_BIN = os.environ.get("FERRY_BIN") or os.path.join(REPO, "build", "ferry")
STANDIN = os.environ.get("FERRY_STANDIN", "")
SLOWDOWN = float(os.environ.get("FERRY_SLOWDOWN", "1") or 1)

# Every file the tests write (keys included, e.g. a cert+key PEM assembled with open()) is
# private: ferry refuses a private key that other users can read.
os.umask(0o077)

_live_procs = []  # subprocess.Popen objects we started and have not reaped yet
_ferries = []  # every Ferry started, for printing its stderr when a test fails
_temp_dirs = []


def bound(seconds):
    """A time bound, stretched for slow (sanitizer) builds."""
    return seconds * SLOWDOWN


# --------------------------------------------------------------------------------------------
# cleanup


def _cleanup():
    for p in list(_live_procs):
        kill_proc(p)
    for d in list(_temp_dirs):
        shutil.rmtree(d, ignore_errors=True)
        _temp_dirs.remove(d)


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    _cleanup()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _child_setup():
    # If this test process dies without running atexit (SIGKILL from a ctest timeout), the
    # kernel kills the child too.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, **kw):
    """Popen that is tracked for cleanup and dies with us."""
    p = subprocess.Popen(argv, preexec_fn=_child_setup, **kw)
    _live_procs.append(p)
    return p


def kill_proc(p):
    """SIGKILL one process we started (by PID) and reap it."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    if p in _live_procs and p.poll() is not None:
        _live_procs.remove(p)


def make_temp_dir(prefix="ferry-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _temp_dirs.append(d)
    return d


def run(argv, timeout=60, check=True, input=None, **kw):
    """Run a short command (openssl, curl, promtool, ferry --check) with a hard time bound."""
    p = spawn(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_proc(p)
        raise AssertionError(f"command timed out after {timeout}s: {' '.join(argv)}")
    finally:
        if p.poll() is not None and p in _live_procs:
            _live_procs.remove(p)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(argv)}\n"
                             f"{err.decode(errors='replace')}")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


# --------------------------------------------------------------------------------------------
# certificates

_CA_CNF = """\
[ca]
default_ca = CA_default
[CA_default]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
default_md = sha256
policy = pol
copy_extensions = copy
unique_subject = no
[pol]
commonName = supplied
"""

SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"


class Certs:
    """Certificates generated with the openssl CLI into `dir`.

    ec_crt/ec_key      EC P-256, self-signed, CN=localhost, SANs DNS:localhost, IP:127.0.0.1
    rsa_crt/rsa_key    RSA 2048, same names
    expired_crt/_key   EC P-256, valid only in January 2020
    other_key          an EC key that matches none of the certificates
    """

    def __init__(self, dir):
        self.dir = dir
        j = lambda n: os.path.join(dir, n)
        self.ec_crt, self.ec_key = j("ec.crt"), j("ec.key")
        self.rsa_crt, self.rsa_key = j("rsa.crt"), j("rsa.key")
        self.expired_crt, self.expired_key = j("expired.crt"), j("expired.key")
        self.other_key = j("other.key")
        self._gen()

    def _gen(self):
        for newkey, crt, key in (
            (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], self.ec_crt, self.ec_key),
            (["-newkey", "rsa:2048"], self.rsa_crt, self.rsa_key),
        ):
            run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", crt,
                 "-days", "365", "-subj", "/CN=localhost", "-addext", SAN])
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", self.other_key])
        # Expired: `openssl req -days` refuses non-positive values, so sign with `openssl ca`.
        cadir = os.path.join(self.dir, "ca")
        os.mkdir(cadir)
        open(os.path.join(cadir, "index.txt"), "w").close()
        with open(os.path.join(cadir, "serial"), "w") as f:
            f.write("01\n")
        cnf = os.path.join(cadir, "ca.cnf")
        with open(cnf, "w") as f:
            f.write(_CA_CNF.format(d=cadir))
        csr = os.path.join(cadir, "expired.csr")
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.expired_key, "-out", csr, "-subj", "/CN=localhost",
             "-addext", SAN])
        run(["openssl", "ca", "-batch", "-config", cnf, "-selfsign", "-keyfile", self.expired_key,
             "-in", csr, "-out", self.expired_crt, "-startdate", "20200101000000Z",
             "-enddate", "20200201000000Z", "-notext"])


_PKI_CNF = """\
[ca]
default_ca = CA_default
[CA_default]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}/new
serial = {d}/serial
crlnumber = {d}/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = pol
copy_extensions = copy
unique_subject = no
[pol]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = optional
"""


class Pki:
    """A CA (EC P-256) issuing leaf certificates with the openssl CLI, and its CRL.

    pki = Pki(dir, "ca")                 # pki.ca_crt / pki.ca_key
    crt, key = pki.issue("a", sans=["DNS:a.test"])            # server leaf, CN=a.test by default
    crt, key = pki.issue("app1", subject="/O=Acme/CN=app1",   # -> "CN=app1,O=Acme" (RFC 2253)
                         sans=["URI:spiffe://prod/app1"])
    crt, key = pki.issue("old", start="20200101000000Z", end="20200201000000Z")  # expired
    pki.revoke(crt); crl = pki.crl()     # PEM CRL signed by the CA (`openssl ca -gencrl`)
    """

    def __init__(self, dir, name="ca", cn=None):
        self.dir = os.path.join(dir, f"pki-{name}")
        self.name = name
        os.makedirs(os.path.join(self.dir, "new"))
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("01\n")
        self.cnf = os.path.join(self.dir, "ca.cnf")
        with open(self.cnf, "w") as f:
            f.write(_PKI_CNF.format(d=self.dir))
        self.ca_crt = os.path.join(self.dir, "ca.crt")
        self.ca_key = os.path.join(self.dir, "ca.key")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "3650",
             "-subj", f"/CN={cn or f'ferry test CA {name}'}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])

    def issue(self, name, subject=None, sans=None, key="ec", start=None, end=None, days=365,
              extensions=()):
        """A leaf signed by this CA; returns (crt, key) paths. key: "ec" (P-256) or "rsa"
        (2048). sans: e.g. ["DNS:a.test", "IP:127.0.0.1", "URI:spiffe://prod/app1"]; default
        DNS:<name>. subject: an openssl -subj string; default /CN=<first DNS SAN or name>.
        extensions: more -addext values, e.g. ["extendedKeyUsage=clientAuth"]."""
        sans = list(sans) if sans is not None else [f"DNS:{name}"]
        if subject is None:
            dns = [x[4:] for x in sans if x.startswith("DNS:")]
            subject = f"/CN={dns[0] if dns else name}"
        crt = os.path.join(self.dir, f"{name}.crt")
        keyf = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        newkey = (["-newkey", "rsa:2048"] if key == "rsa" else
                  ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        ext = ["-addext", "basicConstraints=critical,CA:FALSE"]
        for e in extensions:
            ext += ["-addext", e]
        if sans:
            ext += ["-addext", "subjectAltName=" + ",".join(sans)]
        run(["openssl", "req", "-new", *newkey, "-nodes", "-keyout", keyf, "-out", csr,
             "-subj", subject, *ext])
        dates = (["-startdate", start, "-enddate", end] if start or end else
                 ["-days", str(days)])
        run(["openssl", "ca", "-batch", "-config", self.cnf, "-cert", self.ca_crt,
             "-keyfile", self.ca_key, "-in", csr, "-out", crt, "-preserveDN", "-notext",
             *dates])
        return crt, keyf

    def revoke(self, crt):
        run(["openssl", "ca", "-batch", "-config", self.cnf, "-cert", self.ca_crt,
             "-keyfile", self.ca_key, "-revoke", crt])

    def crl(self, name="crl.pem"):
        out = os.path.join(self.dir, name)
        run(["openssl", "ca", "-batch", "-config", self.cnf, "-cert", self.ca_crt,
             "-keyfile", self.ca_key, "-gencrl", "-out", out])
        return out


def rfc2253_subject(crt):
    """The subject as `openssl x509 -noout -subject -nameopt RFC2253` prints it (no prefix)."""
    out = run(["openssl", "x509", "-in", crt, "-noout", "-subject", "-nameopt", "RFC2253"])
    return out.stdout.decode().strip().removeprefix("subject=")


def cert_der(crt):
    """The DER bytes of the first certificate of a PEM file (to compare with getpeercert)."""
    with open(crt) as f:
        pem = f.read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----"):end])


def cert_not_after(crt):
    """notAfter of a PEM certificate as Unix time (via `openssl x509 -enddate`)."""
    out = run(["openssl", "x509", "-in", crt, "-noout", "-enddate"]).stdout.decode().strip()
    m = re.fullmatch(r"notAfter=(.*) GMT", out)
    assert m, out
    return calendar.timegm(time.strptime(" ".join(m.group(1).split()), "%b %d %H:%M:%S %Y"))


_stdnames = None


def iana_cipher_name(openssl_name):
    """'ECDHE-ECDSA-AES128-GCM-SHA256' -> 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256'."""
    global _stdnames
    if openssl_name.startswith("TLS_"):
        return openssl_name
    if _stdnames is None:
        out = run(["openssl", "ciphers", "-stdname", "ALL:COMPLEMENTOFALL"]).stdout.decode()
        _stdnames = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "-":
                _stdnames[parts[2]] = parts[0]
    return _stdnames[openssl_name]


# --------------------------------------------------------------------------------------------
# sockets and clients


_handed_out = set()  # ports free_port() returned in this process: never returned twice


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago, and not one this process was given
    already (the kernel may hand the same ephemeral port out again once its socket is closed,
    which once gave two services of one config the same accept address)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("free_port: no new port in 100 tries")


def wait_port(port, timeout, proc=None, host="127.0.0.1"):
    """Wait until host:port accepts TCP connections. Returns True/False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def client_context(cafile, min_version=None, max_version=None, ciphers=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def tls_connect(port, ctx, server_hostname="localhost", timeout=30, session=None):
    """A connected, handshaken ssl.SSLSocket to 127.0.0.1:port."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def recv_all(sock, limit=1 << 31, hasher=None):
    """Read until EOF. Returns the bytes (or, with a hasher, the byte count)."""
    chunks, n = [], 0
    while n <= limit:
        try:
            b = sock.recv(1 << 16)
        except ssl.SSLEOFError:  # TCP EOF without close_notify
            break
        if not b:
            break
        n += len(b)
        if hasher is not None:
            hasher.update(b)
        else:
            chunks.append(b)
    return n if hasher is not None else b"".join(chunks)


def recv_exact(sock, n):
    """Read exactly n bytes (fewer only if the peer ends first)."""
    got = bytearray()
    while len(got) < n:
        b = sock.recv(min(1 << 16, n - len(got)))
        if not b:
            break
        got += b
    return bytes(got)


def wait_eof(sock, timeout):
    """Wait until the peer ends the connection. Returns seconds waited, or None on timeout.

    EOF, a TLS alert, close_notify and a reset all count as 'ended'. Data is discarded.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            b = sock.recv(1 << 16)
        except socket.timeout:
            return None
        except (ssl.SSLError, OSError):
            return time.monotonic() - start
        if not b:
            return time.monotonic() - start


class MemTLS:
    """A blocking TLS client built from ssl.SSLObject + memory BIOs over a plain socket.

    Unlike ssl.SSLSocket it can send a real close_notify (close_write) and keep reading, and
    half-close TCP without tearing down the TLS state (shutdown_tcp_write).
    """

    def __init__(self, port, ctx, server_hostname="localhost", timeout=30, session=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname,
                                session=session)
        self.ragged_eof = False  # TCP EOF seen without close_notify
        try:
            self._do(self.obj.do_handshake)
        except BaseException:
            self.sock.close()
            raise

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _do(self, fn, *args):
        for _ in range(1 << 30):
            try:
                r = fn(*args)
            except ssl.SSLWantReadError:
                self._flush()
                b = self.sock.recv(1 << 16)
                if b:
                    self.incoming.write(b)
                else:
                    self.incoming.write_eof()
                continue
            self._flush()
            return r

    def sendall(self, data):
        view = memoryview(data)
        for i in range(0, len(view), 1 << 18):
            self._do(self.obj.write, view[i:i + (1 << 18)])

    def recv(self, n=1 << 16):
        """Decrypted bytes; b"" at close_notify or at TCP EOF (then .ragged_eof is set)."""
        try:
            return self._do(self.obj.read, n)
        except ssl.SSLZeroReturnError:
            return b""
        except ssl.SSLEOFError:
            self.ragged_eof = True
            return b""

    def close_write(self):
        """Send close_notify (our write side is done); keep reading."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is sent; the peer's has not arrived yet
        self._flush()

    def shutdown_tcp_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def duplex(self, chunks, on_data, half_close="close_notify", timeout=120):
        """Send `chunks` while reading concurrently (single thread, select), then half-close
        ("close_notify", "tcp", "both" or None) and read until the peer ends. Every decrypted
        piece goes to on_data(bytes). Returns "close_notify" or "tcp_eof": how the peer ended."""
        self.sock.setblocking(False)
        pending = bytearray()  # ciphertext not yet on the wire
        it = iter(chunks)
        sending, shut_tcp = True, False
        deadline = time.monotonic() + timeout
        try:
            while True:
                if sending and len(pending) < (1 << 20):
                    c = next(it, None)
                    if c is None:
                        sending = False
                        if half_close in ("close_notify", "both"):
                            try:
                                self.obj.unwrap()
                            except ssl.SSLWantReadError:
                                pass
                        shut_tcp = half_close in ("tcp", "both")
                    else:
                        self.obj.write(c)
                    pending += self.outgoing.read()
                if not pending and shut_tcp:
                    self.sock.shutdown(socket.SHUT_WR)
                    shut_tcp = False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("duplex: peer did not finish in time")
                want_w = [self.sock] if pending else []
                r, w, _ = select.select([self.sock], want_w, [],
                                        min(left, 0 if sending and not pending else left))
                if w:
                    try:
                        n = self.sock.send(pending)
                        del pending[:n]
                    except BlockingIOError:
                        pass
                if r:
                    try:
                        b = self.sock.recv(1 << 16)
                    except BlockingIOError:
                        b = None
                    if b == b"":
                        self.incoming.write_eof()
                    elif b:
                        self.incoming.write(b)
                    while True:
                        try:
                            d = self.obj.read(1 << 16)
                        except ssl.SSLWantReadError:
                            break
                        except ssl.SSLZeroReturnError:
                            return "close_notify"
                        except ssl.SSLEOFError:
                            self.ragged_eof = True
                            return "tcp_eof"
                        if not d:
                            return "close_notify"
                        on_data(d)
                    pending += self.outgoing.read()
        finally:
            self.sock.settimeout(timeout)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def cipher(self):
        return self.obj.cipher()

    def version(self):
        return self.obj.version()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tcp_shutdown_write(ssl_sock):
    """Half-close the TCP connection under an ssl.SSLSocket WITHOUT sending close_notify.

    (ssl.SSLSocket.shutdown() would drop the TLS state; call the plain socket method instead.)
    """
    socket.socket.shutdown(ssl_sock, socket.SHUT_WR)


# --------------------------------------------------------------------------------------------
# metrics

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset({(label, value)})): float}."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        labels, pos = {}, 0
        while pos < len(labels_text):
            lm = _LABEL_RE.match(labels_text, pos)
            assert lm and lm.end() > pos, f"unparseable labels: {line!r}"
            labels[lm.group(1)] = (lm.group(2).replace('\\"', '"').replace("\\n", "\n")
                                   .replace("\\\\", "\\"))
            pos = lm.end()
        out[(name, frozenset(labels.items()))] = float(value)
    return out


def mget(metrics, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (0.0 when none match)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


def mfind(metrics, name, **labels):
    """All (labels dict, value) of `name` whose labels include `labels`."""
    want = set(labels.items())
    return [(dict(ls), v) for (n, ls), v in metrics.items() if n == name and want <= ls]


# --------------------------------------------------------------------------------------------
# the daemon


def toml_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v) if isinstance(v, int) else toml_str(v)


def _is_table_array(v):
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def service(name, accept_port, connect_port, cert, key=None, tls=None, **extra):
    """A [[service]] table as a dict, in the order it is written.

    tls: more keys as a dict, e.g. {"min_version": "1.3", "alpn": ["h2", "http/1.1"],
    "certificates": [{"cert": a_crt, "key": a_key}, ...]}. A list of dicts is written as
    [[service.KEY]] sub-tables after the plain keys; other lists as TOML arrays.
    """
    d = {"name": name, "accept": f"127.0.0.1:{accept_port}",
         "connect": f"127.0.0.1:{connect_port}", "cert": cert}
    if key is not None:
        d["key"] = key
    d.update(tls or {})
    d.update(extra)
    return d


def client_service(name, accept_port, connect_port, server_name=None, ca=None, verify=None,
                   cert=None, key=None, connect_host="127.0.0.1", tls=None, **extra):
    """A mode = "client" [[service]]: plaintext on 127.0.0.1:accept_port, TLS to
    connect_host:connect_port. None leaves a key out (ferry's default applies)."""
    d = {"name": name, "mode": "client", "accept": f"127.0.0.1:{accept_port}",
         "connect": f"{connect_host}:{connect_port}"}
    for k, v in (("server_name", server_name), ("ca", ca), ("verify", verify), ("cert", cert),
                 ("key", key)):
        if v is not None:
            d[k] = v
    d.update(tls or {})
    d.update(extra)
    return d


def config_text(services, metrics_port=None, workers=1, log_level="info", global_extra=None):
    """global_extra: more [global] keys, e.g. {"user": "nobody"} (strings, ints or bools)."""
    lines = ["[global]", f"workers = {workers}", f"log_level = {toml_str(log_level)}"]
    for k, v in (global_extra or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    lines.append("")
    if metrics_port is not None:
        lines += ["[metrics]", f"listen = {toml_str(f'127.0.0.1:{metrics_port}')}", ""]
    for s in services:
        lines.append("[[service]]")
        for k, v in s.items():
            if not _is_table_array(v):
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        for k, v in s.items():
            if _is_table_array(v):
                for sub in v:
                    lines.append(f"[[service.{k}]]")
                    lines += [f"{sk} = {toml_value(sv)}" for sk, sv in sub.items()]
                    lines.append("")
    return "\n".join(lines)


class Ferry:
    """One running ferry (or stand-in) process.

    f = Ferry(dir, services=[...]); f.start(); ...; f.stop()   # stop() asserts exit code 0
    """

    def __init__(self, dir, services, workers=1, metrics=True, log_level="info", name="ferry",
                 global_extra=None):
        self.dir = dir
        self.services = services
        self.metrics_port = free_port() if metrics and not STANDIN else None
        self.config_path = os.path.join(dir, f"{name}.toml")
        self.stderr_path = os.path.join(dir, f"{name}.stderr")
        self.stdout_path = os.path.join(dir, f"{name}.stdout")
        self.proc = None
        self.started_at = None
        self.log_level = log_level
        self.spawn_kw = {}  # more Popen arguments, e.g. user=/group= to start it unprivileged
        with open(self.config_path, "w") as f:
            f.write(config_text(services, self.metrics_port, workers, log_level, global_extra))

    @property
    def has_metrics(self):
        return self.metrics_port is not None

    def port(self, service_name=None):
        for s in self.services:
            if service_name is None or s["name"] == service_name:
                return int(s["accept"].rsplit(":", 1)[1])
        raise KeyError(service_name)

    def argv(self):
        if STANDIN == "stunnel":
            return self._stunnel_argv()
        return [getattr(self, "binary", FERRY_BIN), "--config", self.config_path]

    def _stunnel_argv(self):
        conf = os.path.join(self.dir, "stunnel.conf")
        lines = ["foreground = yes", "pid =", "debug = 5", "syslog = no"]
        for s in self.services:
            accept = re.sub(r"^\[(.*)\]:", r"\1:", s["accept"])  # stunnel: ::1:port
            lines += [f"[{s['name']}]", f"accept = {accept}", f"connect = {s['connect']}",
                      f"cert = {s['cert']}", f"key = {s.get('key', s['cert'])}",
                      "sslVersionMin = TLSv1.2",
                      "ciphers = ECDHE+AESGCM:ECDHE+CHACHA20"]
            if "idle_timeout" in s:
                lines.append(f"TIMEOUTidle = {max(1, parse_duration_s(s['idle_timeout']))}")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return ["stunnel4", conf]

    def start(self, ready_timeout=10):
        _ferries.append(self)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.started_at = time.time()
            self.proc = spawn(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              **self.spawn_kw)
        deadline = time.monotonic() + bound(ready_timeout)
        if STANDIN or self.log_level not in ("info", "debug"):
            # No "ready" line to wait for: probe the ports (ferry counts these connections).
            for s in self.services:
                host = s["accept"].rsplit(":", 1)[0].strip("[]")
                if not wait_port(self.port(s["name"]), deadline - time.monotonic(), self.proc,
                                 host):
                    self.fail(f"{s['name']} accept port {self.port(s['name'])} did not answer "
                              f"within {bound(ready_timeout)}s (exit code {self.proc.poll()})")
        else:
            # Not a TCP probe of the accept ports: ferry would count it (a connection that
            # closes before its handshake). The contract's "ready" line comes after every
            # listener is bound.
            rx = re.compile(r"^\S+ info ferry \S+ ready: ", re.M)
            while not rx.search(self.stderr_text()):
                if self.proc.poll() is not None:
                    self.fail(f"exited during start-up with code {self.proc.returncode}")
                if time.monotonic() >= deadline:
                    self.fail(f"no 'ready' log line within {bound(ready_timeout)}s")
                time.sleep(0.02)
        if self.has_metrics:
            last = None
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    self.scrape_text(timeout=1)
                    break
                except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                    last = e
                    time.sleep(0.05)
            else:
                self.fail(f"metrics endpoint did not answer within {bound(ready_timeout)}s: {last}")
            if self.proc.poll() is not None:
                self.fail(f"exited during start-up with code {self.proc.returncode}")
        return self

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, n=40):
        return "\n".join(self.stderr_text().splitlines()[-n:])

    def fail(self, msg):
        raise AssertionError(f"{msg}\n--- ferry stderr (tail) ---\n{self.stderr_tail()}\n---")

    def check(self, cond, msg):
        if not cond:
            self.fail(msg)

    def wait_log(self, pattern, timeout=5, start=0):
        """Wait for a stderr line matching regex `pattern`; returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + bound(timeout)
        while True:
            m = rx.search(self.stderr_text(), start)
            if m:
                return m
            if time.monotonic() >= deadline:
                self.fail(f"no log line matching {pattern!r} within {bound(timeout)}s")
            time.sleep(0.05)

    def log_offset(self):
        return len(self.stderr_text())

    # metrics --------------------------------------------------------------------------------

    def scrape_text(self, timeout=10):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status != 200:
                raise AssertionError(f"GET {url}: HTTP {r.status}")
            return r.read().decode()

    def scrape(self):
        if not self.has_metrics:
            return {}
        try:
            return parse_metrics(self.scrape_text())
        except Exception as e:  # noqa: BLE001
            self.fail(f"scraping metrics failed: {e!r}")

    def wait_metric(self, pred, timeout=5, what="metric condition"):
        """Scrape until pred(metrics) is true; returns those metrics."""
        deadline = time.monotonic() + bound(timeout)
        while True:
            m = self.scrape()
            if pred(m):
                return m
            if time.monotonic() >= deadline:
                self.fail(f"{what}: not reached within {bound(timeout)}s")
            time.sleep(0.05)

    # stopping -------------------------------------------------------------------------------

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=bound(timeout))
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is not None and self.proc in _live_procs:
                _live_procs.remove(self.proc)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signal ferry by PID, assert it exits 0 within the bound. Returns seconds taken."""
        if self.proc is None:
            return 0.0
        if self.proc.poll() is not None:
            self.fail(f"ferry had already exited with code {self.proc.returncode}")
        start = time.monotonic()
        self.send_signal(sig)
        rc = self.wait_exit(timeout)
        took = time.monotonic() - start
        if rc is None:
            kill_proc(self.proc)
            self.fail(f"did not exit within {bound(timeout)}s of {signal.Signals(sig).name}")
        if STANDIN == "stunnel":
            return took
        self.check(rc == 0, f"exit code {rc} after {signal.Signals(sig).name}, expected 0")
        return took

    def kill(self):
        if self.proc is not None:
            kill_proc(self.proc)


def parse_duration_s(text):
    total = 0.0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h)", text):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return int(total)


# --------------------------------------------------------------------------------------------
# a tiny test runner: each test is a function; prints "N passed, M failed"


class Suite:
    """Run test functions in order; report each failure with its reason and ferry's stderr."""

    def __init__(self, name):
        self.name = name
        self.tests = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def main(self):
        passed = failed = 0
        only = sys.argv[1:]
        for fn in self.tests:
            if only and fn.__name__ not in only:
                continue
            t0 = time.monotonic()
            n_ferries = len(_ferries)
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL {self.name}.{fn.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
                traceback.print_exc()
                if "--- ferry stderr" not in str(e):
                    # the module's long-running ferry, and any started by this test
                    for f in _ferries[:1] + _ferries[max(1, n_ferries):]:
                        print(f"--- ferry stderr (tail) {f.stderr_path} ---\n"
                              f"{f.stderr_tail()}\n---", file=sys.stderr)
                sys.stderr.flush()
            else:
                passed += 1
                print(f"ok   {self.name}.{fn.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        print(f"{passed} passed, {failed} failed", flush=True)
        _cleanup()
        sys.exit(1 if failed or passed == 0 else 0)


if not STANDIN and not os.access(FERRY_BIN, os.X_OK):
    print(f"FERRY_BIN={FERRY_BIN} is not an executable", file=sys.stderr)
    sys.exit(1)
