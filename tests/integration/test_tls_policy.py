#!/usr/bin/env python3
"""Server-side TLS policy (issue 3): interop with openssl s_client, curl, gnutls-cli and Python
ssl; versions, ciphers, ALPN, SNI certificate selection (exact, wildcard, default, ECDSA + RSA
for one name); client certificates (required / optional, CRL, allow-lists), each refusal with
its reason label, its log line and no backend connection; shared ticket keys across two ferry
processes; TLS 1.3 record padding seen on the wire."""

import hashlib
import os
import re
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import HTTP_BODY, Backend, source_digest  # noqa: E402

MiB = 1 << 20
REASONS = ("timeout", "not_tls", "protocol_version", "no_shared_cipher", "peer_closed",
           "no_application_protocol", "no_client_cert", "unknown_ca", "cert_revoked",
           "cert_expired", "not_allowed", "hostname_mismatch", "bad_certificate", "other")

S = H.Suite("tls_policy")
tmp = H.make_temp_dir()
pki = H.Pki(tmp, "ca")
rogue = H.Pki(tmp, "rogue")
CA = pki.ca_crt
default_crt, default_key = pki.issue("localhost", sans=["DNS:localhost", "IP:127.0.0.1"])
SNI_CERTS = {n: pki.issue(n) for n in ("a.test", "b.test", "c.test")}
wild_crt, wild_key = pki.issue("wild", subject="/CN=*.wild.test", sans=["DNS:*.wild.test"])
dual_ec = pki.issue("dual-ec", subject="/CN=dual.test", sans=["DNS:dual.test"])
dual_rsa = pki.issue("dual-rsa", subject="/CN=dual.test", sans=["DNS:dual.test"], key="rsa")
# client certificates
app1 = pki.issue("app1", subject="/O=Acme/CN=app1",
                 sans=["URI:spiffe://prod/app1", "DNS:app1.internal"])
app2 = pki.issue("app2", subject="/O=Acme/CN=app2", sans=["URI:spiffe://prod/app2"])
expired_client = pki.issue("old", subject="/O=Acme/CN=old", sans=[],
                           start="20200101000000Z", end="20200201000000Z")
revoked_client = pki.issue("revoked", subject="/O=Acme/CN=revoked", sans=[])
pki.revoke(revoked_client[0])
CRL = pki.crl()
stranger = rogue.issue("stranger", subject="/O=Acme/CN=app1", sans=["URI:spiffe://prod/app1"])
APP1_SUBJECT = H.rfc2253_subject(app1[0])
assert APP1_SUBJECT == "CN=app1,O=Acme", APP1_SUBJECT

backend = Backend().start()


def svc(name, **tls):
    return H.service(name, H.free_port(), backend.port, default_crt, default_key, tls=tls)


ferry = H.Ferry(tmp, [
    svc("web"),
    svc("v13", min_version="1.3"),
    svc("v12", max_version="1.2"),
    svc("ciph", ciphers="ECDHE-ECDSA-CHACHA20-POLY1305",
        ciphersuites="TLS_CHACHA20_POLY1305_SHA256"),
    svc("alpn", alpn=["h2", "http/1.1"]),
    svc("sni", certificates=[{"cert": c, "key": k} for c, k in
                             (*SNI_CERTS.values(), (wild_crt, wild_key), dual_ec, dual_rsa)]),
    svc("mtls", client_ca=CA, crl=CRL),
    svc("subj", client_ca=CA, allow_subjects=[APP1_SUBJECT]),
    svc("sans", client_ca=CA, allow_sans=["spiffe://prod/app1"]),
    svc("sans_dns", client_ca=CA, allow_sans=["app1.internal"]),
    svc("grp", groups="P-384"),
    svc("opt", client_ca=CA, verify_client="optional"),
    svc("pad", record_padding=256),
]).start()


def ctx_for(version=None, cert=None, alpn=None, ciphers=None, verify=True):
    ctx = H.client_context(CA, min_version=version, max_version=version, ciphers=ciphers,
                           verify=verify)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def echo_ok(service, ctx, server_hostname="localhost", msg=b"policy"):
    """A Python client completes a handshake and echoes `msg`; returns (version, cipher, alpn,
    peer cert DER)."""
    with H.tls_connect(ferry.port(service), ctx, server_hostname=server_hostname,
                       timeout=H.bound(10)) as s:
        s.sendall(b"ECHO\n" + msg)
        got = H.recv_exact(s, len(msg))
        ferry.check(got == msg, f"{service}: echo {got!r}")
        return s.version(), s.cipher()[0], s.selected_alpn_protocol(), s.getpeercert(True)


def failures(m, service, reason):
    return H.mget(m, "ferry_handshake_failures_total", service=service, reason=reason)


def py_client_fails(service, ctx, server_hostname="localhost"):
    """A Python client that must be refused (during the handshake or, with TLS 1.3 client
    certificates, right after it). Returns its local port."""
    raw = socket.create_connection(("127.0.0.1", ferry.port(service)), timeout=H.bound(10))
    port = raw.getsockname()[1]
    try:
        s = ctx.wrap_socket(raw, server_hostname=server_hostname)
    except (ssl.SSLError, OSError):
        raw.close()
        return port
    with s:
        data = b""
        try:
            s.sendall(b"ECHO\nrefused?")
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                data += b
        except socket.timeout:
            ferry.fail(f"{service}: a refused client was not ended within {H.bound(10)}s")
        except (ssl.SSLError, OSError):
            pass
        ferry.check(data == b"", f"{service}: a client that should be refused got {data!r}")
    return port


def expect_refused(service, reason, client, detail=None):
    """client() returns its local port (or None: any port). Checks the log line, that only
    `reason` moved, no handshake counted, and that the backend saw no connection."""
    before = ferry.scrape()
    off = ferry.log_offset()
    accepted = backend.accepted
    port = client()
    m = ferry.wait_log(r"^\S+ info \[w\d+ c\d+\] handshake failed: service=%s "
                       r"client=127\.0\.0\.1:%s reason=(\S+) \((.+)\)$"
                       % (service, port if port is not None else r"\d+"), start=off)
    ferry.check(m.group(1) == reason, f"{service}: logged reason={m.group(1)}, expected "
                                      f"{reason}: {m.group(0)}")
    if detail is not None:
        ferry.check(re.search(detail, m.group(2)) is not None,
                    f"{service}: log line lacks /{detail}/: {m.group(0)}")
    ferry.wait_metric(lambda m: failures(m, service, reason) > failures(before, service, reason),
                      what=f"ferry_handshake_failures_total{{service={service},"
                           f"reason={reason}}} to move")
    time.sleep(0.2)  # a double count, or a late backend connection, would show by now
    after = ferry.scrape()
    for r in REASONS:
        d = failures(after, service, r) - failures(before, service, r)
        ferry.check(d == (1 if r == reason else 0),
                    f"ferry_handshake_failures_total{{service={service},reason={r}}} moved by "
                    f"{d}, expected {1 if r == reason else 0}")
    d = (H.mget(after, "ferry_handshakes_total", service=service)
         - H.mget(before, "ferry_handshakes_total", service=service))
    ferry.check(d == 0, f"{service}: ferry_handshakes_total moved by {d} for a refused client")
    ferry.check(backend.accepted == accepted,
                f"{service}: the backend accepted {backend.accepted - accepted} connection(s) "
                f"for a refused client")


def s_client(port, *extra, input=b"", servername="localhost"):
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", CA]
    if servername:
        args += ["-servername", servername]
    return H.run(args + list(extra), input=input, timeout=H.bound(30), check=False)


# --------------------------------------------------------------------------------------------
# interop: each client completes a handshake and moves data


@S.test
def interop_openssl_s_client():
    n = 2 * MiB + 11
    for extra in ([], ["-tls1_2"]):
        r = s_client(ferry.port("web"), "-verify_return_error", "-verify_hostname", "localhost",
                     "-quiet", *extra, input=b"SOURCE %d\n" % n)
        ferry.check(r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() ==
                    source_digest(n), f"s_client {extra}: exit {r.returncode}, "
                                      f"{len(r.stdout)} bytes, {r.stderr[-400:]!r}")


@S.test
def interop_curl():
    for extra in ([], ["--tlsv1.2", "--tls-max", "1.2"]):
        r = H.run(["curl", "-sS", "--max-time", str(H.bound(20)), "--cacert", CA,
                   "--resolve", f"localhost:{ferry.port('web')}:127.0.0.1", *extra,
                   f"https://localhost:{ferry.port('web')}/"], timeout=H.bound(30), check=False)
        ferry.check(r.returncode == 0 and r.stdout == HTTP_BODY,
                    f"curl {extra}: exit {r.returncode}, {r.stdout[:100]!r}, {r.stderr!r}")


@S.test
def interop_gnutls_cli():
    n = 64 * 1024 + 5  # gnutls-cli writes what it receives slowly: ~4 s per MiB
    for prio, version in ((None, "TLS1.3"), ("NORMAL:-VERS-ALL:+VERS-TLS1.2", "TLS1.2")):
        log = os.path.join(tmp, "gnutls-cli.log")
        argv = ["gnutls-cli", f"--logfile={log}", "--x509cafile", CA, "-p",
                str(ferry.port("web")), "--sni-hostname", "localhost", "--verify-hostname",
                "localhost", "127.0.0.1"]
        if prio:
            argv.insert(1, f"--priority={prio}")
        r = H.run(argv, input=b"SOURCE %d\n" % n, timeout=H.bound(30), check=False)
        info = open(log, errors="replace").read() if os.path.exists(log) else ""
        ferry.check(hashlib.sha256(r.stdout).hexdigest() == source_digest(n),
                    f"gnutls-cli {prio}: exit {r.returncode}, {len(r.stdout)} bytes\n"
                    f"{info[-800:]}{r.stderr[-400:]!r}")
        ferry.check(f"({version}" in info, f"gnutls-cli {prio}: not {version}:\n{info[-800:]}")


@S.test
def interop_python_ssl():
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        with H.tls_connect(ferry.port("web"), ctx_for(version), timeout=H.bound(30)) as s:
            s.sendall(b"SOURCE %d\n" % (3 * MiB))
            h = hashlib.sha256()
            got = H.recv_all(s, hasher=h)
            ferry.check(got == 3 * MiB and h.hexdigest() == source_digest(3 * MiB),
                        f"python {version.name}: {got} bytes")


# --------------------------------------------------------------------------------------------
# versions and ciphers


@S.test
def tls13_only_refuses_tls12_client():
    v, _, _, _ = echo_ok("v13", ctx_for())
    ferry.check(v == "TLSv1.3", f"v13 negotiated {v}")
    expect_refused("v13", "protocol_version",
                   lambda: py_client_fails("v13", ctx_for(ssl.TLSVersion.TLSv1_2)))


@S.test
def tls12_max_negotiates_tls12():
    v, _, _, _ = echo_ok("v12", ctx_for())
    ferry.check(v == "TLSv1.2", f"max_version = 1.2 negotiated {v}")
    expect_refused("v12", "protocol_version",
                   lambda: py_client_fails("v12", ctx_for(ssl.TLSVersion.TLSv1_3)))


def cipher_counted(service, before, version, iana):
    m = ferry.wait_metric(
        lambda m: H.mget(m, "ferry_handshakes_total", service=service, version=version)
        > H.mget(before, "ferry_handshakes_total", service=service, version=version),
        what=f"ferry_handshakes_total{{service={service},version={version}}} to move")
    d = (H.mget(m, "ferry_handshakes_total", service=service, version=version, cipher=iana)
         - H.mget(before, "ferry_handshakes_total", service=service, version=version,
                  cipher=iana))
    ferry.check(d == 1, f"ferry_handshakes_total{{service={service},version={version},"
                        f"cipher={iana}}} moved by {d}; "
                        f"{H.mfind(m, 'ferry_handshakes_total', service=service)}")


@S.test
def restricted_ciphers_are_honoured():
    for version, want in ((ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305"),
                          (ssl.TLSVersion.TLSv1_3, "TLS_CHACHA20_POLY1305_SHA256")):
        before = ferry.scrape()
        v, cipher, _, _ = echo_ok("ciph", ctx_for(version))  # the client offers everything
        ferry.check(cipher == want, f"ciph {v}: negotiated {cipher}, expected {want}")
        cipher_counted("ciph", before, v, H.iana_cipher_name(cipher))


@S.test
def tls12_cipher_outside_the_list_is_refused():
    ctx = ctx_for(ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    expect_refused("ciph", "no_shared_cipher", lambda: py_client_fails("ciph", ctx))


@S.test
def tls13_ciphersuite_outside_the_list_is_refused():
    def client():
        r = s_client(ferry.port("ciph"), "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        ferry.check(r.returncode != 0, f"s_client with TLS_AES_128_GCM_SHA256 succeeded")
        return None
    expect_refused("ciph", "no_shared_cipher", client)


@S.test
def groups_are_honoured():
    r = s_client(ferry.port("grp"), "-groups", "X25519:P-384", input=b"SOURCE 10\n")
    out = r.stdout.decode(errors="replace")
    ferry.check(r.returncode == 0 and re.search(r"(group|Temp Key).*(secp384r1|P-384)", out),
                f"groups = P-384: s_client exit {r.returncode}\n{out[-1500:]}")

    def client():
        r = s_client(ferry.port("grp"), "-groups", "X25519:P-256")
        ferry.check(r.returncode != 0, "a client without P-384 completed a handshake")
        return None
    expect_refused("grp", "no_shared_cipher", client)


# --------------------------------------------------------------------------------------------
# ALPN


@S.test
def alpn_server_preference_wins():
    for offer, want in ((["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"),
                        (["h2"], "h2"), (None, None)):
        _, _, alpn, _ = echo_ok("alpn", ctx_for(alpn=offer))
        ferry.check(alpn == want, f"client offered {offer}: ferry chose {alpn!r}, "
                                  f"expected {want!r} (server preference h2, http/1.1)")


@S.test
def alpn_without_overlap_is_refused():
    expect_refused("alpn", "no_application_protocol",
                   lambda: py_client_fails("alpn", ctx_for(alpn=["spdy/3", "imap"])))


# --------------------------------------------------------------------------------------------
# SNI


@S.test
def sni_three_names_three_certificates():
    for name, (crt, _) in SNI_CERTS.items():
        _, _, _, der = echo_ok("sni", ctx_for(), server_hostname=name)  # verifies the name too
        ferry.check(der == H.cert_der(crt), f"SNI {name}: served another certificate")


@S.test
def sni_unknown_name_and_no_sni_get_the_default():
    for name in ("unknown.test", None):
        _, _, _, der = echo_ok("sni", ctx_for(verify=False), server_hostname=name)
        ferry.check(der == H.cert_der(default_crt),
                    f"SNI {name!r}: expected the service's default certificate")


@S.test
def sni_wildcard():
    for name in ("x.wild.test", "api.wild.test"):
        _, _, _, der = echo_ok("sni", ctx_for(), server_hostname=name)
        ferry.check(der == H.cert_der(wild_crt), f"SNI {name}: not the wildcard certificate")
    # a wildcard covers one label only
    _, _, _, der = echo_ok("sni", ctx_for(verify=False), server_hostname="a.b.wild.test")
    ferry.check(der == H.cert_der(default_crt), "SNI a.b.wild.test: expected the default")


def served_cert_der(*extra):
    r = s_client(ferry.port("sni"), *extra, servername="dual.test", input=b"")
    text = r.stdout.decode(errors="replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    ferry.check(m is not None, f"s_client {extra}: no certificate shown (exit {r.returncode})\n"
                               f"{text[-800:]}{r.stderr[-400:]!r}")
    return ssl.PEM_cert_to_DER_cert(m.group(0))


@S.test
def ecdsa_and_rsa_for_one_name_signature_algorithms_pick():
    rsa_only = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256"
    for extra, want, what in (
            (["-sigalgs", rsa_only], dual_rsa, "TLS 1.3, RSA signature algorithms only"),
            (["-sigalgs", "ecdsa_secp256r1_sha256"], dual_ec, "TLS 1.3, ECDSA only"),
            (["-tls1_2", "-sigalgs", rsa_only], dual_rsa, "TLS 1.2, RSA sigalgs"),
            (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], dual_rsa,
             "TLS 1.2, ECDHE-RSA cipher"),
            (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], dual_ec,
             "TLS 1.2, ECDHE-ECDSA cipher")):
        der = served_cert_der(*extra)
        ferry.check(der == H.cert_der(want[0]),
                    f"{what}: served the {'RSA' if der == H.cert_der(dual_rsa[0]) else 'ECDSA'}"
                    f" certificate, expected {os.path.basename(want[0])}")


# --------------------------------------------------------------------------------------------
# client certificates


@S.test
def mtls_good_client_is_served():
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        v, _, _, _ = echo_ok("mtls", ctx_for(version, cert=app1))
        ferry.check(v == version.name.replace("_", "."), f"mtls: negotiated {v}")


@S.test
def mtls_required_without_cert():
    expect_refused("mtls", "no_client_cert", lambda: py_client_fails("mtls", ctx_for()))


@S.test
def mtls_untrusted_client_cert():
    expect_refused("mtls", "unknown_ca",
                   lambda: py_client_fails("mtls", ctx_for(cert=stranger)))


@S.test
def mtls_revoked_by_crl():
    expect_refused("mtls", "cert_revoked",
                   lambda: py_client_fails("mtls", ctx_for(cert=revoked_client)))


@S.test
def mtls_expired_client_cert():
    expect_refused("mtls", "cert_expired",
                   lambda: py_client_fails("mtls", ctx_for(cert=expired_client)))


@S.test
def mtls_refusals_over_tls12():
    v12 = ssl.TLSVersion.TLSv1_2
    expect_refused("mtls", "no_client_cert", lambda: py_client_fails("mtls", ctx_for(v12)))
    expect_refused("mtls", "cert_revoked",
                   lambda: py_client_fails("mtls", ctx_for(v12, cert=revoked_client)))


@S.test
def allow_subjects():
    echo_ok("subj", ctx_for(cert=app1))
    expect_refused("subj", "not_allowed", lambda: py_client_fails("subj", ctx_for(cert=app2)))


@S.test
def allow_sans_uri():
    echo_ok("sans", ctx_for(cert=app1))  # URI:spiffe://prod/app1
    expect_refused("sans", "not_allowed", lambda: py_client_fails("sans", ctx_for(cert=app2)))


@S.test
def allow_sans_dns():
    echo_ok("sans_dns", ctx_for(cert=app1))  # DNS:app1.internal
    expect_refused("sans_dns", "not_allowed",
                   lambda: py_client_fails("sans_dns", ctx_for(cert=app2)))


@S.test
def optional_client_cert():
    echo_ok("opt", ctx_for())  # no certificate: fine
    echo_ok("opt", ctx_for(cert=app2))
    expect_refused("opt", "unknown_ca", lambda: py_client_fails("opt", ctx_for(cert=stranger)))
    expect_refused("opt", "cert_expired",
                   lambda: py_client_fails("opt", ctx_for(cert=expired_client)))


@S.test
def mtls_with_gnutls_cli_and_curl():
    log = os.path.join(tmp, "gnutls-mtls.log")
    r = H.run(["gnutls-cli", f"--logfile={log}", "--x509cafile", CA, "--x509certfile", app1[0],
               "--x509keyfile", app1[1], "-p", str(ferry.port("subj")), "--sni-hostname",
               "localhost", "--verify-hostname", "localhost", "127.0.0.1"],
              input=b"SOURCE 1000\n", timeout=H.bound(30), check=False)
    ferry.check(hashlib.sha256(r.stdout).hexdigest() == source_digest(1000),
                f"gnutls-cli with a client certificate: {len(r.stdout)} bytes, exit "
                f"{r.returncode}")
    r = H.run(["curl", "-sS", "--max-time", str(H.bound(20)), "--cacert", CA, "--cert", app1[0],
               "--key", app1[1], "--resolve", f"localhost:{ferry.port('sans')}:127.0.0.1",
               f"https://localhost:{ferry.port('sans')}/"], timeout=H.bound(30), check=False)
    ferry.check(r.returncode == 0 and r.stdout == HTTP_BODY,
                f"curl with a client certificate: exit {r.returncode}, {r.stderr!r}")


# --------------------------------------------------------------------------------------------
# shared ticket keys


@S.test
def tls13_resumption_issues_a_fresh_ticket():
    """Clients use a TLS 1.3 ticket once (RFC 8446, C.4): a resumed connection must bring a new
    ticket, so that a chain of connections, each resuming with the ticket of the one before,
    resumes every time (without it, every other connection was a full handshake)."""
    ctx = ctx_for(ssl.TLSVersion.TLSv1_3)
    session = None
    seen = set()
    for i in range(6):
        with H.tls_connect(ferry.port("web"), ctx, session=session, timeout=H.bound(10)) as s:
            s.sendall(b"ECHO\nz")
            H.recv_exact(s, 1)  # tickets arrive before the echo
            if i > 0:
                ferry.check(s.session_reused, f"connection {i} did not resume")
            session = s.session
        ferry.check(session is not None and session.has_ticket, f"connection {i}: no ticket")
        ticket = session.id
        ferry.check(ticket not in seen, f"connection {i}: no fresh ticket (the same one again)")
        seen.add(ticket)


@S.test
def shared_ticket_key_file_resumes_across_servers():
    k1, k2, k3 = (os.urandom(80).hex() for _ in range(3))
    files = {}
    for name, keys in (("shared", [k1]), ("rotated", [k2, k1]), ("foreign", [k3])):
        files[name] = os.path.join(tmp, f"tickets-{name}.key")
        with open(files[name], "w") as f:
            f.write("\n".join(keys) + "\n")

    def one(name, key_file):
        d = os.path.join(tmp, name)
        os.mkdir(d)
        return H.Ferry(d, [H.service("tix", H.free_port(), backend.port, default_crt,
                                     default_key, tls={"ticket_key_file": key_file})],
                       name=name).start()
    a = one("tix-a", files["shared"])
    b = one("tix-b", files["shared"])
    c = one("tix-c", files["rotated"])  # encrypts with k2, still decrypts k1
    d = one("tix-d", files["foreign"])
    try:
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = ctx_for(version)
            with H.tls_connect(a.port(), ctx, timeout=H.bound(10)) as s:
                s.sendall(b"ECHO\nx")
                H.recv_exact(s, 1)  # the TLS 1.3 ticket arrives before the echo
                session = s.session
            ferry.check(session is not None and session.has_ticket,
                        f"{version.name}: no session ticket from server A")
            for srv, want in ((b, True), (c, True), (d, False)):
                before = srv.scrape()
                with H.tls_connect(srv.port(), ctx, session=session,
                                   timeout=H.bound(10)) as s:
                    s.sendall(b"ECHO\ny")
                    H.recv_exact(s, 1)
                    reused = s.session_reused
                srv.check(reused == want, f"{version.name}: A's ticket on "
                                          f"{os.path.basename(srv.dir)}: session_reused="
                                          f"{reused}, expected {want}")
                if want:
                    srv.wait_metric(
                        lambda m: H.mget(m, "ferry_sessions_resumed_total", service="tix")
                        > H.mget(before, "ferry_sessions_resumed_total", service="tix"),
                        what="ferry_sessions_resumed_total{service=tix} to move")
    finally:
        for f in (a, b, c, d):
            f.stop()


# --------------------------------------------------------------------------------------------
# record padding


def server_records(service, sizes):
    """Echo pieces of the given sizes over TLS 1.3 with a memory-BIO client, keeping every byte
    the server sent. Returns [(content type, length)] of the server's TLS records."""
    ctx = ctx_for(ssl.TLSVersion.TLSv1_3)
    sock = socket.create_connection(("127.0.0.1", ferry.port(service)), timeout=H.bound(10))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    wire = bytearray()

    def pump(fn, *args):
        while True:
            try:
                r = fn(*args)
            except ssl.SSLWantReadError:
                data = out.read()
                if data:
                    sock.sendall(data)
                b = sock.recv(1 << 16)
                ferry.check(b != b"", f"{service}: server closed during the exchange")
                wire.extend(b)
                inc.write(b)
                continue
            data = out.read()
            if data:
                sock.sendall(data)
            return r
    with sock:
        pump(obj.do_handshake)
        pump(obj.write, b"ECHO\n")
        for n in sizes:
            msg = os.urandom(n)
            pump(obj.write, msg)
            got = b""
            while len(got) < n:
                got += pump(obj.read, n - len(got))
            ferry.check(got == msg, f"{service}: echo of {n} bytes differs")
    records, i = [], 0
    while i + 5 <= len(wire):
        ctype, length = wire[i], int.from_bytes(wire[i + 3:i + 5], "big")
        records.append((ctype, length))
        i += 5 + length
    ferry.check(i == len(wire), f"{service}: trailing partial record on the wire")
    return records


@S.test
def record_padding_256():
    sizes = [1, 17, 100, 255, 256, 300, 1000, 4097]
    tag = 16  # AES-GCM / ChaCha20-Poly1305
    recs = [l for t, l in server_records("pad", sizes) if t == 23]  # all encrypted records
    ferry.check(len(recs) >= len(sizes), f"only {len(recs)} encrypted records seen")
    bad = [l for l in recs if (l - tag) % 256 != 0 or l <= tag]
    ferry.check(not bad, f"record_padding = 256: encrypted record lengths {recs}; not "
                         f"256*k + {tag}: {bad}")
    # the check itself can fail: without padding the sizes show through
    plain_recs = [l for t, l in server_records("web", sizes) if t == 23]
    ferry.check(any((l - tag) % 256 != 0 for l in plain_recs),
                f"control without padding: record lengths {plain_recs} all padded?")


@S.test
def sigterm_exits_0():
    ferry.stop()
    backend.stop()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_tls_policy needs the real ferry")
        sys.exit(0)
    S.main()
