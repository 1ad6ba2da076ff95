#!/usr/bin/env python3
"""The CLI: --check on good and bad configs, --version, --help, usage errors, exit codes, and
start-up errors (missing config, port already in use, expired certificate warning)."""

import os
import re
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

S = H.Suite("check")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
ERR_RE = re.compile(r"^(.+):(\d+):(\d+): (\S+): (.+)$")


def ferry(*args, timeout=30, cwd=None):
    return H.run([H.FERRY_BIN, *args], timeout=H.bound(timeout), check=False, cwd=cwd)


def out(r):
    return (f"exit {r.returncode}\n--- stdout ---\n{r.stdout.decode(errors='replace')}"
            f"--- stderr ---\n{r.stderr.decode(errors='replace')}")


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def good_config(cert, key, name="good.toml", **extra):
    svc = H.service("web", 8443, 8080, cert, key, **extra)
    svc["accept"] = "127.0.0.1:8443"
    return write(name, H.config_text([svc], metrics_port=9100, workers=2))


def pos_of(path, line_prefix, at="value"):
    """(line, column) of the first line starting with line_prefix (after indentation): the
    column of the key, or of the value after '='."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            stripped = line.lstrip()
            if stripped.startswith(line_prefix):
                col = len(line) - len(stripped) + 1
                if at == "value":
                    eq = line.index("=")
                    col = eq + 1 + len(line[eq + 1:]) - len(line[eq + 1:].lstrip()) + 1
                return i, col
    raise AssertionError(f"{line_prefix!r} not in {path}")


def check_errors(r, path, expected):
    """expected: list of (line, col, key, message regex). Every one must be on stderr as an
    exact FILE:LINE:COL: KEY: MESSAGE line, and there must be no other such lines."""
    assert r.returncode == 1, f"expected exit 1\n{out(r)}"
    lines = [l for l in r.stderr.decode(errors="replace").splitlines() if l.startswith(path + ":")]
    got = []
    for l in lines:
        m = ERR_RE.match(l)
        assert m and m.group(1) == path, f"not FILE:LINE:COL: KEY: MESSAGE: {l!r}\n{out(r)}"
        got.append((int(m.group(2)), int(m.group(3)), m.group(4), m.group(5)))
    missing = []
    for exp in expected:
        hit = [g for g in got if g[:3] == exp[:3] and re.search(exp[3], g[3])]
        if not hit:
            missing.append(exp)
        else:
            got.remove(hit[0])
    assert not missing and not got, (f"errors expected but missing: {missing}\n"
                                     f"unexpected error lines: {got}\n{out(r)}")


@S.test
def check_good_ec():
    path = good_config(certs.ec_crt, certs.ec_key)
    r = ferry("--check", "--config", path)
    assert r.returncode == 0, out(r)
    text = r.stdout.decode()
    not_after = H.cert_not_after(certs.ec_crt)
    days = int((not_after - time.time()) // 86400)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))
    for want in (f"{path}: OK (1 service, 2 workers)",
                 "service web: server, accept 127.0.0.1:8443, connect 127.0.0.1:8080",
                 "  certificate: subject CN=localhost",
                 "  SANs: DNS:localhost, IP Address:127.0.0.1",
                 (f"  expires: {expires} ({days} days)", f"  expires: {expires} ({days + 1} days)"),
                 "  key: EC P-256"):
        want = (want,) if isinstance(want, str) else want
        assert any(w in text.splitlines() for w in want), \
            f"summary lacks the line {want[0]!r}\n{out(r)}"
    assert not r.stderr.strip(), f"a good config printed on stderr\n{out(r)}"


@S.test
def check_good_rsa_and_combined_pem():
    combined = os.path.join(tmp, "combined.pem")
    with open(combined, "w") as f:
        f.write(open(certs.rsa_crt).read() + open(certs.rsa_key).read())
    path = good_config(combined, None, name="combined.toml")  # key defaults to the cert file
    r = ferry("--check", "--config", path)
    assert r.returncode == 0, out(r)
    assert "  key: RSA 2048" in r.stdout.decode().splitlines(), out(r)


@S.test
def relative_paths_are_relative_to_the_config():
    sub = os.path.join(tmp, "rel")
    os.makedirs(sub, exist_ok=True)
    shutil.copy(certs.ec_crt, os.path.join(sub, "web.crt"))
    shutil.copy(certs.ec_key, os.path.join(sub, "web.key"))
    path = os.path.join(sub, "rel.toml")
    with open(path, "w") as f:
        f.write('[[service]]\nname = "web"\naccept = "127.0.0.1:8443"\n'
                'connect = "127.0.0.1:8080"\ncert = "web.crt"\nkey = "web.key"\n')
    r = ferry("--check", "--config", path, cwd="/")
    assert r.returncode == 0, out(r)


BAD_SERVICE = '''[[service]]
name = "{name}"
accept = "127.0.0.1:{port}"
connect = "127.0.0.1:8080"
cert = "{cert}"
key = "{key}"
'''


@S.test
def check_unknown_key():
    path = write("unknown.toml", "[global]\nwokers = 2\n" + BAD_SERVICE.format(
        name="web", port=8443, cert=certs.ec_crt, key=certs.ec_key))
    check_errors(ferry("--check", "--config", path), path,
                 [(2, 1, "global.wokers", r"^unknown key$")])


@S.test
def check_bad_duration():
    path = write("duration.toml", BAD_SERVICE.format(
        name="web", port=8443, cert=certs.ec_crt, key=certs.ec_key) + 'idle_timeout = "10x"\n')
    line, col = pos_of(path, "idle_timeout")
    check_errors(ferry("--check", "--config", path), path,
                 [(line, col, "service[0].idle_timeout", r'bad duration "10x"')])


@S.test
def check_missing_cert_file():
    missing = os.path.join(tmp, "no-such.crt")
    path = write("missing.toml", BAD_SERVICE.format(name="web", port=8443, cert=missing,
                                                    key=certs.ec_key))
    line, col = pos_of(path, "cert")
    check_errors(ferry("--check", "--config", path), path,
                 [(line, col, "service[0].cert", re.escape(missing))])


@S.test
def check_key_mismatch():
    path = write("mismatch.toml", BAD_SERVICE.format(name="web", port=8443, cert=certs.ec_crt,
                                                     key=certs.other_key))
    line, col = pos_of(path, "key")
    check_errors(ferry("--check", "--config", path), path,
                 [(line, col, "service[0].key", r"(?i)match")])


@S.test
def check_all_errors_at_once():
    """Unknown key, bad duration, missing cert, key mismatch: all four in one run."""
    missing = os.path.join(tmp, "no-such.crt")
    text = ("[global]\nwokers = 2\n"
            + BAD_SERVICE.format(name="web", port=8443, cert=missing, key=certs.ec_key)
            + 'handshake_timeout = "5 s"\n\n'
            + BAD_SERVICE.format(name="api", port=8444, cert=certs.ec_crt, key=certs.other_key))
    path = write("all.toml", text)
    lines = text.splitlines()
    cert_line = lines.index(f'cert = "{missing}"') + 1
    key_line = lines.index(f'key = "{certs.other_key}"') + 1
    dur_line = lines.index('handshake_timeout = "5 s"') + 1
    check_errors(ferry("--check", "--config", path), path, [
        (2, 1, "global.wokers", r"^unknown key$"),
        (cert_line, 8, "service[0].cert", re.escape(missing)),
        (dur_line, 21, "service[0].handshake_timeout", r'bad duration "5 s"'),
        (key_line, 7, "service[1].key", r"(?i)match"),
    ])


@S.test
def check_more_errors_at_once():
    """Duplicate accept address, a key of the other mode, a missing required key: positions and
    keys."""
    text = (BAD_SERVICE.format(name="web", port=8443, cert=certs.ec_crt, key=certs.ec_key)
            + "\n" + BAD_SERVICE.format(name="api", port=8443, cert=certs.ec_crt,
                                        key=certs.ec_key)
            + '\n[[service]]\nname = "cli"\nmode = "client"\naccept = "127.0.0.1:8445"\n'
            + f'cert = "{certs.ec_crt}"\nkey = "{certs.ec_key}"\nclient_ca = "{certs.ec_crt}"\n')
    path = write("more.toml", text)
    lines = text.splitlines()
    dup_line = [i for i, l in enumerate(lines, 1) if l == 'accept = "127.0.0.1:8443"'][1]
    header3 = [i for i, l in enumerate(lines, 1) if l == "[[service]]"][2]
    ca_line = [i for i, l in enumerate(lines, 1) if l.startswith("client_ca = ")][0]
    check_errors(ferry("--check", "--config", path), path, [
        (dup_line, 10, "service[1].accept", r"(?i)duplicate"),
        (ca_line, 13, "service[2].client_ca", r'only for mode = "server"'),
        (header3, 1, "service[2].connect", r"(?i)required"),
    ])


@S.test
def check_syntax_error():
    path = write("syntax.toml", '[global]\nworkers = 1\nlog_level = "info\n')
    r = ferry("--check", "--config", path)
    assert r.returncode == 1, out(r)
    lines = [l for l in r.stderr.decode().splitlines() if l.startswith(path + ":")]
    assert lines and all(ERR_RE.match(l) for l in lines), out(r)
    assert ERR_RE.match(lines[0]).group(2) == "3", f"the error is on line 3\n{out(r)}"


@S.test
def check_expired_cert_warns():
    path = good_config(certs.expired_crt, certs.expired_key, name="expired.toml")
    r = ferry("--check", "--config", path)
    assert r.returncode == 0, f"an expired certificate must only warn\n{out(r)}"
    line, col = pos_of(path, "cert")
    want = re.compile(r"^%s:%d:%d: service\[0\]\.cert: warning: .*expired" %
                      (re.escape(path), line, col), re.M)
    assert want.search(r.stderr.decode()), f"no expiry warning line\n{out(r)}"


@S.test
def version():
    r = ferry("--version")
    assert r.returncode == 0, out(r)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 3, out(r)
    assert re.fullmatch(r"ferry \d+\.\d+\.\d+", lines[0]), out(r)
    assert re.match(r"OpenSSL 3\.\d+\.\d+", lines[1]), out(r)
    assert re.fullmatch(r"libuv 1\.\d+\.\d+", lines[2]), out(r)


@S.test
def help_():
    r = ferry("--help")
    assert r.returncode == 0, out(r)
    text = r.stdout.decode()
    assert "--config" in text and "--check" in text and re.search("(?i)usage", text), out(r)


@S.test
def usage_errors_exit_2():
    for args in (["--bogus"], ["--config"], ["--check", "--config"]):
        r = ferry(*args)
        assert r.returncode == 2, f"ferry {' '.join(args)}\n{out(r)}"
        assert r.stderr.strip(), f"ferry {' '.join(args)}: no message on stderr\n{out(r)}"


@S.test
def missing_config_exits_1():
    missing = os.path.join(tmp, "nope", "ferry.toml")
    for args in (["--check", "--config", missing], ["--config", missing]):
        r = ferry(*args, timeout=10)
        assert r.returncode == 1, f"ferry {' '.join(args)}\n{out(r)}"
        assert missing in r.stderr.decode(), f"the message does not name the file\n{out(r)}"


@S.test
def port_in_use_exits_1():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        path = write("busy.toml", H.config_text(
            [H.service("web", port, 8080, certs.ec_crt, certs.ec_key)]))
        r = ferry("--config", path, timeout=15)
    assert r.returncode == 1, f"starting on a busy port\n{out(r)}"
    err = r.stderr.decode()
    assert f"127.0.0.1:{port}" in err and re.search(r"(?i)in use", err), \
        f"no clear message naming the address\n{out(r)}"


@S.test
def metrics_port_in_use_exits_1():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        svc = H.service("web", H.free_port(), 8080, certs.ec_crt, certs.ec_key)
        path = write("busy_metrics.toml", H.config_text([svc], metrics_port=port))
        r = ferry("--config", path, timeout=15)
    assert r.returncode == 1, f"starting with a busy metrics port\n{out(r)}"
    assert str(port) in r.stderr.decode(), f"no message naming the port\n{out(r)}"


@S.test
def start_with_expired_cert_warns_and_runs():
    d = H.make_temp_dir()
    f = H.Ferry(d, [H.service("web", H.free_port(), H.free_port(), certs.expired_crt,
                              certs.expired_key)])
    try:
        f.start()
        # At start the warning may be a log line or the --check form FILE:LINE:COL: KEY: warning:
        f.wait_log(r"^(\S+ warn .*expired|%s:\d+:\d+: service\[0\]\.cert: warning: .*expired)"
                   % re.escape(f.config_path), timeout=5)
        f.wait_log(r"^\S+ info ferry \d+\.\d+\.\d+ ready: 1 workers?, 1 services?$", timeout=5)
        f.stop()
    finally:
        f.kill()


@S.test
def workers_0_means_one_per_cpu_and_no_metrics_table_means_no_endpoint():
    d = H.make_temp_dir()
    f = H.Ferry(d, [H.service("web", H.free_port(), H.free_port(), certs.ec_crt, certs.ec_key)],
                workers=0, metrics=False)
    try:
        f.start()
        m = f.wait_log(r"^\S+ info ferry \S+ ready: (\d+) workers?, 1 service$")
        cpus = {os.cpu_count(), len(os.sched_getaffinity(0))}
        f.check(int(m.group(1)) in cpus, f"workers = 0 started {m.group(1)} workers, CPUs: {cpus}")
        f.stop()
    finally:
        f.kill()


@S.test
def log_format_and_level():
    """log_level = "warn": no info lines; every line is TIMESTAMP LEVEL [...] message."""
    from backend import Backend
    d = H.make_temp_dir()
    dead = H.free_port()
    with Backend() as b:
        f = H.Ferry(d, [H.service("web", H.free_port(), b.port, certs.ec_crt, certs.ec_key),
                        H.service("down", H.free_port(), dead, certs.ec_crt, certs.ec_key)],
                    log_level="warn")
        try:
            f.start()
            ctx = H.client_context(certs.ec_crt)
            with H.tls_connect(f.port("web"), ctx) as s:
                s.sendall(b"ECHO\nx")
                H.recv_exact(s, 1)
            with socket.create_connection(("127.0.0.1", f.port("web"))) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                H.wait_eof(s, H.bound(5))
            try:
                with H.tls_connect(f.port("down"), ctx) as s:
                    H.wait_eof(s, H.bound(5))
            except (OSError, H.ssl.SSLError):
                pass
            f.wait_log(r"^\S+ warn \[w\d+ c\d+\] backend connect failed: service=down ")
            f.stop()
        finally:
            f.kill()
    lines = f.stderr_text().splitlines()
    rx = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) "
                    r"(\[w\d+ c\d+\] )?\S")
    bad = [l for l in lines if not rx.match(l)]
    assert not bad, f"log lines not in the contract's format: {bad[:5]}"
    # The "ready" line is info by the contract; any other info line is a level leak.
    info = [l for l in lines if l.split()[1] in ("info", "debug") and " ready: " not in l]
    assert not info, f"log_level = warn still logs: {info[:5]}"


if __name__ == "__main__":
    if H.STANDIN:
        print("test_check needs the real ferry")
        sys.exit(0)
    S.main()
