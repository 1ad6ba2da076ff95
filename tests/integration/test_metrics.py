#!/usr/bin/env python3
"""The metrics endpoint: every name of the contract, values that move with traffic,
`promtool check metrics` clean, bounded labels (no client address, no raw SNI)."""

import hashlib
import os
import re
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

PROMTOOL = "/usr/bin/promtool"
REASONS = ("timeout", "not_tls", "protocol_version", "no_shared_cipher", "peer_closed", "other")
SERVICE_METRICS = (
    "ferry_connections_total", "ferry_connections_active", "ferry_connections_closed_total",
    "ferry_handshakes_total", "ferry_handshake_failures_total", "ferry_sessions_resumed_total",
    "ferry_bytes_total", "ferry_backend_connect_failures_total",
    "ferry_certificate_expiry_timestamp_seconds",
    "ferry_backend_up", "ferry_backend_connections_total", "ferry_connections_rejected_total",
    "ferry_listener_paused_total",
)
RELOAD_METRICS = ("ferry_config_reloads_total", "ferry_config_last_reload_successful",
                  "ferry_config_last_reload_success_timestamp_seconds")
HISTOGRAMS = ("ferry_handshake_duration_seconds", "ferry_connection_duration_seconds")
PROCESS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
           "process_start_time_seconds")
ODD_SNI = "zq-unbounded-sni-7f3a.example"

S = H.Suite("metrics")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
ferry = H.Ferry(tmp, [
    H.service("web", H.free_port(), backend.port, certs.ec_crt, certs.ec_key),
    H.service("rsa", H.free_port(), backend.port, certs.rsa_crt, certs.rsa_key),
]).start()
PORT = ferry.port("web")
CTX = H.client_context(certs.ec_crt)
client_ports = []


def echo(ctx=CTX, port=PORT, payload=b"hello", session=None, server_hostname="localhost"):
    with H.tls_connect(port, ctx, session=session, server_hostname=server_hostname) as s:
        client_ports.append(s.getsockname()[1])
        s.sendall(b"ECHO\n" + payload)
        ferry.check(H.recv_exact(s, len(payload)) == payload, "echo failed")
        return s.session, s.session_reused


def delta(before, after, name, **labels):
    return H.mget(after, name, **labels) - H.mget(before, name, **labels)


@S.test
def present_from_start():
    m = ferry.scrape()
    for svc in ("web", "rsa"):
        for r in REASONS:
            ferry.check(("ferry_handshake_failures_total",
                         frozenset({("service", svc), ("reason", r)})) in m,
                        f"ferry_handshake_failures_total{{service={svc},reason={r}}} is not "
                        f"present at start")
        for d in ("to_backend", "to_client"):
            ferry.check(bool(H.mfind(m, "ferry_bytes_total", service=svc, direction=d)),
                        f"ferry_bytes_total{{service={svc},direction={d}}} missing at start")
        for name in ("ferry_connections_total", "ferry_connections_active",
                     "ferry_backend_connect_failures_total", "ferry_sessions_resumed_total"):
            found = H.mfind(m, name, service=svc)
            ferry.check(found and all(v == 0 for _, v in found),
                        f"{name}{{service={svc}}} should be 0 at start: {found}")


@S.test
def values_move_with_traffic():
    before = ferry.scrape()
    for _ in range(3):
        echo()
    m = ferry.wait_metric(lambda m: delta(before, m, "ferry_connections_closed_total",
                                          service="web", reason="done") >= 3,
                          what="3 connections closed with reason done")
    for name, labels, want in (
        ("ferry_connections_total", {}, 3),
        ("ferry_connections_closed_total", {"reason": "done"}, 3),
        ("ferry_connections_closed_total", {}, 3),
        ("ferry_handshakes_total", {"version": "TLSv1.3"}, 3),
        ("ferry_handshake_duration_seconds_count", {}, 3),
        ("ferry_connection_duration_seconds_count", {}, 3),
        ("ferry_bytes_total", {"direction": "to_backend"}, 3 * 10),
        ("ferry_bytes_total", {"direction": "to_client"}, 3 * 5),
        ("ferry_connections_active", {}, 0),
    ):
        d = delta(before, m, name, service="web", **labels)
        ferry.check(d == want, f"{name}{{service=web,{labels}}} moved by {d}, expected {want}")
    d = delta(before, m, "ferry_connections_total", service="rsa")
    ferry.check(d == 0, f"traffic on web moved ferry_connections_total{{service=rsa}} by {d}")
    for h in HISTOGRAMS:
        buckets = sorted(((float(l["le"]), v) for l, v in H.mfind(m, h + "_bucket", service="web")),
                         key=lambda x: x[0])
        ferry.check(buckets and buckets[-1][0] == float("inf"), f"{h} lacks an +Inf bucket")
        ferry.check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])),
                    f"{h} buckets are not cumulative: {buckets}")
        ferry.check(buckets[-1][1] == H.mget(m, h + "_count", service="web"),
                    f"{h}: +Inf bucket != _count")
        s = H.mget(m, h + "_sum", service="web")
        ferry.check(0 <= s < 60 * H.mget(m, h + "_count", service="web"), f"{h}_sum = {s}")


@S.test
def active_gauge_counts_open_connections():
    before = ferry.scrape()
    socks = [H.tls_connect(PORT, CTX) for _ in range(3)]
    try:
        for s in socks:
            s.sendall(b"ECHO\nx")
            H.recv_exact(s, 1)
        m = ferry.scrape()
        d = delta(before, m, "ferry_connections_active", service="web")
        ferry.check(d == 3, f"ferry_connections_active moved by {d} with 3 connections open")
    finally:
        for s in socks:
            s.close()
    ferry.wait_metric(lambda m: H.mget(m, "ferry_connections_active", service="web") == 0,
                      what="ferry_connections_active back to 0")


@S.test
def sessions_resumed():
    for maxv in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = H.client_context(certs.ec_crt, max_version=maxv)
        before = ferry.scrape()
        session, reused = echo(ctx)
        ferry.check(session is not None and not reused, f"{maxv.name}: no session to resume")
        _, reused = echo(ctx, session=session)
        ferry.check(reused, f"{maxv.name}: the session was not resumed (tickets/cache off?)")
        m = ferry.wait_metric(
            lambda m: delta(before, m, "ferry_sessions_resumed_total", service="web") >= 1,
            what=f"{maxv.name}: ferry_sessions_resumed_total to move")
        d = delta(before, m, "ferry_sessions_resumed_total", service="web")
        ferry.check(d == 1, f"{maxv.name}: ferry_sessions_resumed_total moved by {d}")
        d = delta(before, m, "ferry_handshakes_total", service="web")
        ferry.check(d == 2, f"{maxv.name}: ferry_handshakes_total moved by {d}, expected 2")


@S.test
def session_cache_without_tickets():
    """TLS 1.2 resumption by session ID (the client refuses tickets): the server-side cache."""
    ctx = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_TICKET
    before = ferry.scrape()
    session, _ = echo(ctx)
    _, reused = echo(ctx, session=session)
    ferry.check(reused, "a TLS 1.2 session ID was not resumed: no server-side session cache?")
    m = ferry.wait_metric(
        lambda m: delta(before, m, "ferry_sessions_resumed_total", service="web") >= 1,
        what="ferry_sessions_resumed_total to move")
    d = delta(before, m, "ferry_sessions_resumed_total", service="web")
    ferry.check(d == 1, f"ferry_sessions_resumed_total moved by {d}")


@S.test
def handshake_labels_are_iana_names():
    ctx12 = H.client_context(certs.rsa_crt, max_version=ssl.TLSVersion.TLSv1_2)
    with H.tls_connect(ferry.port("rsa"), ctx12) as s:
        iana = H.iana_cipher_name(s.cipher()[0])
    m = ferry.wait_metric(
        lambda m: H.mget(m, "ferry_handshakes_total", service="rsa", version="TLSv1.2",
                         cipher=iana) >= 1,
        what=f"ferry_handshakes_total{{service=rsa,version=TLSv1.2,cipher={iana}}}")
    for labels, _ in H.mfind(m, "ferry_handshakes_total"):
        ferry.check(labels.get("version") in ("TLSv1.2", "TLSv1.3"),
                    f"handshake version label {labels}")
        ferry.check(re.fullmatch(r"TLS_[A-Z0-9_]+", labels.get("cipher", "")),
                    f"handshake cipher label is not an IANA name: {labels}")


@S.test
def build_info():
    m = ferry.scrape()
    found = H.mfind(m, "ferry_build_info")
    ferry.check(len(found) == 1, f"ferry_build_info: {found}")
    labels, v = found[0]
    ferry.check(v == 1, f"ferry_build_info = {v}")
    version = H.run([H.FERRY_BIN, "--version"]).stdout.decode().splitlines()
    ferry.check(f"ferry {labels.get('version')}" == version[0],
                f"build_info version {labels} vs --version {version}")
    ferry.check(labels.get("openssl", "").startswith("3.") or
                labels.get("openssl", "").startswith("OpenSSL 3."),
                f"build_info openssl label {labels}")
    ferry.check(f"libuv {labels.get('libuv')}" == version[2],
                f"build_info libuv {labels} vs --version {version}")


@S.test
def certificate_expiry():
    m = ferry.scrape()
    for svc, crt in (("web", certs.ec_crt), ("rsa", certs.rsa_crt)):
        found = H.mfind(m, "ferry_certificate_expiry_timestamp_seconds", service=svc)
        ferry.check(len(found) == 1, f"expiry gauge for {svc}: {found}")
        labels, v = found[0]
        ferry.check("localhost" in labels.get("subject", ""), f"subject label {labels}")
        ferry.check(v == H.cert_not_after(crt),
                    f"{svc}: expiry {v} != notAfter {H.cert_not_after(crt)}")


@S.test
def process_metrics():
    m = ferry.scrape()
    for name in PROCESS:
        ferry.check(len(H.mfind(m, name)) == 1, f"{name} missing or labelled: "
                                                 f"{H.mfind(m, name)}")
    cpu = H.mget(m, "process_cpu_seconds_total")
    rss = H.mget(m, "process_resident_memory_bytes")
    fds = H.mget(m, "process_open_fds")
    start = H.mget(m, "process_start_time_seconds")
    ferry.check(0 <= cpu < 3600, f"process_cpu_seconds_total = {cpu}")
    ferry.check(1 << 20 < rss < 8 << 30, f"process_resident_memory_bytes = {rss}")
    real_fds = len(os.listdir(f"/proc/{ferry.proc.pid}/fd"))
    ferry.check(5 <= fds < 10000 and abs(fds - real_fds) <= 3,
                f"process_open_fds = {fds}, /proc says {real_fds}")
    ferry.check(abs(start - ferry.started_at) < 5,
                f"process_start_time_seconds = {start}, started at {ferry.started_at}")
    # CPU time moves with work
    with H.tls_connect(PORT, CTX, timeout=H.bound(60)) as s:  # 64 MiB of AES: >= 20 ms
        s.sendall(b"SOURCE %d\n" % (64 << 20))
        H.recv_all(s, hasher=hashlib.sha256())
    cpu2 = H.mget(ferry.scrape(), "process_cpu_seconds_total")
    ferry.check(cpu2 > cpu, f"process_cpu_seconds_total did not move: {cpu} -> {cpu2}")


@S.test
def labels_are_bounded():
    ctx = H.client_context(certs.ec_crt, verify=False)
    echo(ctx, server_hostname=ODD_SNI)
    ctx_bad = H.client_context(certs.ec_crt, max_version=ssl.TLSVersion.TLSv1_2,
                               ciphers="AES128-SHA")
    try:
        H.tls_connect(PORT, ctx_bad, server_hostname=ODD_SNI).close()
    except (ssl.SSLError, OSError):
        pass
    time.sleep(0.3)
    text = ferry.scrape_text()
    ferry.check(ODD_SNI not in text, "a raw SNI string appears in the metrics")
    # The only addresses allowed are the configured backends (the `backend` label).
    no_backends = re.sub(r'backend="[^"]*"', "", text)
    ferry.check("127.0.0.1" not in no_backends, "a client IP address appears in the metrics")
    for p in client_ports:
        ferry.check(f":{p}" not in text, f"client port {p} appears in the metrics")
    allowed = {"service", "reason", "version", "cipher", "direction", "subject", "openssl",
               "backend",
               "libuv", "le", "quantile", "result"}
    for (name, labels) in H.parse_metrics(text):
        extra = {k for k, _ in labels} - allowed
        ferry.check(not extra, f"{name} has unexpected labels {extra}")


@S.test
def every_contract_name_present():
    m = ferry.scrape()
    names = {n for n, _ in m}
    want = set(SERVICE_METRICS) | set(PROCESS) | set(RELOAD_METRICS) | {"ferry_build_info"}
    for h in HISTOGRAMS:
        want |= {h + "_bucket", h + "_sum", h + "_count"}
    ferry.check(not (want - names), f"missing metrics: {sorted(want - names)}")
    extra = {n for n in names if n.startswith("ferry_")} - want
    ferry.check(not extra, f"metrics not in the contract: {sorted(extra)}")


@S.test
def promtool_check_metrics():
    if not os.access(PROMTOOL, os.X_OK):
        raise AssertionError(f"{PROMTOOL} not found: apt-get install prometheus")
    text = ferry.scrape_text()
    r = H.run([PROMTOOL, "check", "metrics"], input=text.encode(), check=False, timeout=60)
    problems = (r.stdout + r.stderr).decode(errors="replace").strip()
    ferry.check(r.returncode == 0 and not problems,
                f"promtool check metrics: exit {r.returncode}\n{problems}")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_metrics needs the real ferry")
        sys.exit(0)
    S.main()
