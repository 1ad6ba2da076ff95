#!/usr/bin/env python3
"""Regenerate the seed corpora in tests/fuzz/corpus/<target>/ (committed; .ci/fuzz runs on a
temporary copy, so fuzzing never grows them).

    tests/fuzz/make_seeds.py            # rewrite every corpus
    tests/fuzz/make_seeds.py --check    # exit 1 if a corpus directory is missing or empty

Seeds are small and hand-made: configs (including config/ferry.example.toml), durations,
addresses and CIDRs, v1/v2 PROXY headers, and real TLS client flights:
  - Python's ssl module (OpenSSL 3) in memory, against an in-memory Python server using the
    fixed PKI of tests/fuzz/certs/: ClientHellos with and without SNI/ALPN, TLS 1.2 and 1.3,
    complete TLS 1.2 client flights carrying a client certificate (allowed, not allowed,
    revoked, unknown CA), resumptions whose ticket is re-labelled with the name of the first key
    in certs/tickets.keys so ferry's ticket callback finds a key;
  - openssl s_client through a recording relay to openssl s_server on 127.0.0.1 (a HelloRetry-
    Request flight, other cipher and group choices).
TLS captures contain random values, so rerunning changes those files. Needs only loopback.
"""

import os
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CERTS = os.path.join(HERE, "certs")
CORPUS = os.path.join(HERE, "corpus")
TARGETS = ["fuzz_config", "fuzz_duration_address", "fuzz_proxy_protocol", "fuzz_client_hello"]


def cert(name):
    return os.path.join(CERTS, name)


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- fuzz_config ------------------------------------------------------------------------------

CONFIGS = {
    "minimal.toml": """\
[[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "/etc/ferry/web.crt"
key = "/etc/ferry/web.key"
""",
    "global-metrics.toml": """\
[global]
workers = 2
log_level = "debug"
log_format = "json"
access_log = false
shutdown_timeout = "1m30s"
watch_files = false
user = "ferry"
group = "ferry"

[metrics]
listen = "[::1]:9100"

[[service]]
name = "redis"
accept = "[::]:6380"
connect = "localhost:6379"
cert = "redis.pem"
handshake_timeout = "250ms"
connect_timeout = "2s"
idle_timeout = "1h"
""",
    "tls-policy.toml": """\
[[service]]
name = "api"
accept = "systemd:api"
connect = "127.0.0.1:8080"
cert = "api-ec.crt"
key = "api-ec.key"
min_version = "1.3"
max_version = "1.3"
ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"
ciphersuites = "TLS_AES_256_GCM_SHA384"
groups = "X25519"
alpn = ["h2", "http/1.1"]
client_ca = "clients.pem"
verify_client = "optional"
crl = "clients.crl"
allow_subjects = ["CN=client,O=Acme"]
allow_sans = ["client.example.com", "spiffe://example.com/x", "10.0.0.1", "[::1]"]
session_tickets = true
ticket_key_file = "tickets.keys"
record_padding = 512

[[service.certificates]]
cert = "api-rsa.crt"
key = "api-rsa.key"

[[service.certificates]]
cert = "wild.pem"
""",
    "client-mode.toml": """\
[[service]]
name = "smtp-out"
mode = "client"
accept = "127.0.0.1:2525"
connect = "mail.example.com:465"
server_name = "mail.example.com"
ca = "/etc/ssl/certs"
verify = false
cert = "client.crt"
key = "client.key"
alpn = ["smtp"]
""",
    "errors.toml": """\
[global]
workers = "two"
log_levl = "info"
shutdown_timeout = "10 s"

[metrics]
listen = "nowhere"

[[service]]
name = "Web!"
accept = "0.0.0.0:99999"
connect = "[::1:8080"
cert = ""
min_version = "1.1"
record_padding = -1
verify = true

[[service]]
name = "Web!"
accept = "0.0.0.0:99999"
""",
    # Backends, routes, PROXY protocol, limits, access lists and Unix sockets (issue 5 keys).
    "backends-routes.toml": """\
[global]
max_open_files = 65536

[[service]]
name = "web"
accept = "unix:/run/ferry/web.sock"
unix_mode = "0660"
unix_owner = "ferry"
unix_group = "www-data"
backlog = 128
cert = "web.pem"
connect = ["10.0.0.1:8080", "[2001:db8::1]:8080", "unix:/run/web.sock"]
balance = "least-connections"
max_fails = 2
fail_timeout = "30s"
max_connections = 1000
allow = ["10.0.0.0/8", "::1/128", "192.168.1.1"]
deny = ["10.9.0.0/16"]
tcp_keepalive = "60s"
proxy_protocol = "v2"
accept_proxy = true
accept_proxy_from = ["172.16.0.0/12"]

[[service.route]]
sni = "api.example.com"
connect = ["127.0.0.1:9000"]
balance = "failover"
proxy_protocol = "none"

[[service.route]]
sni = "*.apps.example.com"
connect = "127.0.0.1:9001"
""",
    "syntax-error.toml": "[[service]\nname = \"web\n",
    "inline-tables.toml": """\
global = { workers = 1, log_level = "warn" }
service = [ { name = "a", accept = "127.0.0.1:1", connect = "127.0.0.1:2", cert = "a.pem" },
            { name = "b", accept = "127.0.0.1:1", connect = "127.0.0.1:3", cert = "b.pem",
              certificates = [ { cert = "c.pem" } ] } ]
""",
}


def config_seeds():
    for name, text in CONFIGS.items():
        write("fuzz_config", name, text)
    with open(os.path.join(ROOT, "config", "ferry.example.toml"), "rb") as f:
        write("fuzz_config", "ferry.example.toml", f.read())


# ---- fuzz_duration_address: first byte picks the parser (byte % 3) ----------------------------

DURATIONS = ["10s", "250ms", "5m", "1h", "1m30s", "24h", "1h0m0s1ms", "0s", "86400001ms",
             "99999999999999999999h", "10 s", "1.5s", "-1s", "s", "10", "10x"]
ADDRESSES = ["127.0.0.1:8080", "[::1]:443", "[fe80::1%eth0]:8443", "localhost:65535",
             "0.0.0.0:0", "::1:80", "[::1]", "host:", ":80", "a_b-c.d:1", "[1.2.3.4]:5",
             "127.0.0.1:99999999999"]
CIDRS = ["10.0.0.0/8", "192.168.1.1", "::1/128", "2001:db8::/32", "::ffff:10.0.0.0/104",
         "0.0.0.0/0", "::/0", "10.1.2.3/8", "10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/+8",
         "fe80::/10", "1.2.3.4/32", "/8", "10.0.0.0/"]


def value_seeds():
    for i, text in enumerate(DURATIONS):
        write("fuzz_duration_address", f"duration-{i:02}", "0" + text)
    for i, text in enumerate(ADDRESSES):
        write("fuzz_duration_address", f"address-{i:02}", "1" + text)
    for i, text in enumerate(CIDRS):
        write("fuzz_duration_address", f"cidr-{i:02}", "2" + text)


# ---- fuzz_proxy_protocol ----------------------------------------------------------------------

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


def v2(command, family, addresses=b"", tlvs=b""):
    body = addresses + tlvs
    return V2_SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(header):
    """`header` (a v2 header ending in a zeroed PP2_TYPE_CRC32C TLV) with its checksum filled."""
    return header[:-4] + struct.pack("!I", crc32c(header))


def proxy_seeds():
    v1 = {
        "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v1-unknown-addrs": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        "v1-payload": b"PROXY TCP4 10.0.0.1 10.0.0.2 1 65535\r\n\x16\x03\x01\x00\x05hello",
        "v1-partial": b"PROXY TCP4 10.0.0.1 ",
        "v1-bad-port": b"PROXY TCP4 10.0.0.1 10.0.0.2 0443 443\r\n",
        "v1-max": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    }
    for name, data in v1.items():
        write("fuzz_proxy_protocol", name, data)

    inet = socket.inet_pton
    a4 = inet(socket.AF_INET, "192.0.2.1") + inet(socket.AF_INET, "198.51.100.2") + \
        struct.pack("!HH", 56324, 443)
    a6 = inet(socket.AF_INET6, "2001:db8::1") + inet(socket.AF_INET6, "2001:db8::2") + \
        struct.pack("!HH", 56324, 443)
    ssl_tlv = tlv(0x20, bytes([0x01 | 0x02 | 0x04]) + struct.pack("!I", 0) +
                  tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client") +
                  tlv(0x23, b"TLS_AES_128_GCM_SHA256") + tlv(0x24, b"ecdsa-with-SHA256") +
                  tlv(0x25, b"EC256"))
    v2s = {
        "v2-inet": v2(1, 0x11, a4),
        "v2-inet6": v2(1, 0x21, a6),
        "v2-local": v2(0, 0x00),
        "v2-local-with-addrs": v2(0, 0x11, a4),
        "v2-unspec": v2(1, 0x00),
        "v2-tlvs": v2(1, 0x11, a4, tlv(0x01, b"h2") + tlv(0x02, b"example.com") + ssl_tlv),
        "v2-inet6-ssl-verify-failed": v2(1, 0x21, a6, tlv(0x20, bytes([0x01, ]) +
                                                          struct.pack("!I", 20))),
        "v2-unknown-tlv": v2(1, 0x11, a4, tlv(0xE0, b"vendor") + tlv(0x04, b"")),
        "v2-noop-bad-crc": v2(1, 0x11, a4, tlv(0x04, b"\x00" * 8) + tlv(0x03, b"\x00" * 4)),
        "v2-crc": with_crc(v2(1, 0x11, a4, tlv(0x02, b"example.com") + tlv(0x03, b"\x00" * 4))),
        "v2-payload": v2(1, 0x11, a4) + b"\x16\x03\x01\x02\x00\x01",
        "v2-partial": v2(1, 0x11, a4)[:20],
        "v2-unix": v2(1, 0x31, b"\x00" * 216),
        "v2-udp": v2(1, 0x12, a4),
    }
    for name, data in v2s.items():
        write("fuzz_proxy_protocol", name, data)


# ---- fuzz_client_hello ------------------------------------------------------------------------

def client_context(max_version=None, alpn=None, cert_name=None, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert_name:
        ctx.load_cert_chain(cert(cert_name + ".crt"), cert(cert_name + ".key"))
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def server_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert("server-ec.crt"), cert("server-ec.key"))
    ctx.load_verify_locations(cert("ca.crt"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def step(obj):
    try:
        obj.do_handshake()
        return True
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False


def first_flight(ctx, sni, session=None):
    """The ClientHello `ctx` sends for server name `sni` (None: no SNI)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=sni, session=session)
    step(client)
    return outgoing.read()


def full_handshake(ctx, sni, session=None, server_ctx=None):
    """Every byte the client sends during a whole in-memory handshake (plus reading one byte of
    application data so TLS 1.3 tickets arrive), and the client's session afterwards."""
    server_ctx = server_ctx or server_context()
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = ctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    sent = b""
    client_done = server_done = False
    for _ in range(20):
        client_done = client_done or step(client)
        data = c_out.read()
        sent += data
        s_in.write(data)
        try:
            server_done = server_done or step(server)
        except ssl.SSLError:
            break  # the server refused (e.g. a bad client certificate): keep what was sent
        c_in.write(s_out.read())
        if client_done and server_done:
            break
    if client_done and server_done:
        server.write(b"x")
        c_in.write(s_out.read())
        try:
            client.read(1)
        except ssl.SSLError:
            pass
        sent += c_out.read()
    return sent, client.session if client_done else None


def ticket_key_name():
    with open(cert("tickets.keys")) as f:
        return bytes.fromhex(f.readline().strip())[:16]


def relabel_ticket(hello, name):
    """Put `name` over the first 16 bytes of the ticket in a ClientHello (TLS 1.2
    session_ticket extension, or the first TLS 1.3 pre_shared_key identity)."""
    b = bytearray(hello)
    p = 5 + 4 + 2 + 32  # record header, handshake header, version, random
    p += 1 + b[p]  # session id
    p += 2 + struct.unpack_from("!H", b, p)[0]  # cipher suites
    p += 1 + b[p]  # compression methods
    end = p + 2 + struct.unpack_from("!H", b, p)[0]
    p += 2
    while p + 4 <= end:
        kind, length = struct.unpack_from("!HH", b, p)
        data = p + 4
        if kind == 0x0023 and length >= 16:
            b[data:data + 16] = name
            return bytes(b)
        if kind == 0x0029:
            ident_len = struct.unpack_from("!H", b, data + 2)[0]
            if ident_len >= 16:
                b[data + 4:data + 20] = name
                return bytes(b)
        p = data + length
    return None


def python_hello_seeds():
    t = "fuzz_client_hello"
    tls12 = ssl.TLSVersion.TLSv1_2
    write(t, "py-tls13-localhost-alpn", first_flight(client_context(alpn=["h2", "http/1.1"]),
                                                      "localhost"))
    write(t, "py-tls13-no-sni", first_flight(client_context(), None))
    write(t, "py-tls13-sni-rsa", first_flight(client_context(alpn=["http/1.1"]), "rsa.fuzz.test"))
    write(t, "py-tls13-sni-wildcard", first_flight(client_context(), "a.wild.fuzz.test"))
    write(t, "py-tls13-alpn-mismatch",
          first_flight(client_context(alpn=["spdy/3", "acme-tls/1"]), "localhost"))
    # No route for the name: the SNI gate refuses it (unknown_sni).
    write(t, "py-tls13-sni-unrouted", first_flight(client_context(), "unknown.example"))
    # Routes compare case-insensitively and ignore one trailing dot.
    write(t, "py-tls13-sni-case-dot", first_flight(client_context(), "X.Wild.Fuzz.Test."))
    write(t, "py-tls12-rsa-cipher",
          first_flight(client_context(max_version=tls12, ciphers="ECDHE-RSA-AES128-GCM-SHA256"),
                       "rsa.fuzz.test"))
    write(t, "py-tls12-cbc-only",
          first_flight(client_context(max_version=tls12, ciphers="AES128-SHA:ECDHE-RSA-AES128-SHA"),
                       "localhost"))
    # TLS 1.2: the client's Certificate message is plaintext, so ferry verifies it right away.
    for who in ["client", "intruder", "revoked", "server-ec"]:
        sent, _ = full_handshake(client_context(max_version=tls12, cert_name=who), "localhost")
        write(t, f"py-tls12-client-cert-{who}", sent)
    sent, _ = full_handshake(client_context(cert_name="client"), "localhost")
    write(t, "py-tls13-client-cert-full", sent)
    # Resumption with tickets that name ferry's first ticket key.
    name = ticket_key_name()
    for label, version in [("tls12", tls12), ("tls13", None)]:
        ctx = client_context(max_version=version)
        _, session = full_handshake(ctx, "localhost")
        if session is None:
            continue
        hello = first_flight(ctx, "localhost", session=session)
        write(t, f"py-{label}-resume-foreign-ticket", hello)
        relabelled = relabel_ticket(hello, name)
        if relabelled:
            write(t, f"py-{label}-resume-ferry-key-name", relabelled)
    write(t, "not-tls-http", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    write(t, "sslv2-hello", bytes.fromhex("802e0103010015000000100100800300800700c006004000"
                                          "4000020080") + os.urandom(16))


class Relay:
    """127.0.0.1:port -> target, recording what the client sends. One connection at a time."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]

    def capture(self, run_client):
        """Runs run_client(port) while relaying one connection; returns the client's bytes."""
        result = {}

        def serve():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            sent = b""
            conn.setblocking(False)
            upstream.setblocking(False)
            deadline = time.monotonic() + 8
            open_ends = 2
            sel = selectors.DefaultSelector()
            sel.register(conn, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, conn)
            while open_ends and time.monotonic() < deadline:
                for key, _ in sel.select(0.2):
                    try:
                        data = key.fileobj.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        open_ends -= 1
                        continue
                    if key.fileobj is conn:
                        sent += data
                    try:
                        key.data.sendall(data)
                    except OSError:
                        pass
            conn.close()
            upstream.close()
            result["sent"] = sent

        thread = threading.Thread(target=serve)
        thread.start()
        run_client(self.port)
        thread.join(12)
        return result.get("sent", b"")


def openssl_seeds():
    t = "fuzz_client_hello"
    # s_server wants P-256 only, so a client whose key share is X448 gets a HelloRetryRequest;
    # ferry (X25519:P-256:P-384) retries the same way, so CH1 + CCS + CH2 drives its callbacks
    # twice.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "4", "-cert",
         cert("server-ec.crt"), "-key", cert("server-ec.key"), "-CAfile", cert("ca.crt"),
         "-verify", "1", "-groups", "P-256", "-alpn", "h2,http/1.1", "-quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("openssl s_server did not start")
                time.sleep(0.1)
        relay = Relay(port)
        variants = {
            "s_client-tls13-hrr-x448": ["-tls1_3", "-groups", "X448:P-256", "-servername",
                                        "rsa.fuzz.test", "-alpn", "h2"],
            "s_client-tls12-client-cert": ["-tls1_2", "-servername", "localhost", "-cert",
                                           cert("client.crt"), "-key", cert("client.key")],
            "s_client-tls13-p384-chacha": ["-tls1_3", "-groups", "P-384:P-256", "-ciphersuites",
                                           "TLS_CHACHA20_POLY1305_SHA256", "-servername",
                                           "b.wild.fuzz.test", "-alpn", "http/1.1,h2"],
        }
        for name, args in variants.items():
            def run(p, args=args):
                subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p}"] + args,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
            sent = relay.capture(run)
            if sent:
                write(t, name, sent)
            else:
                print(f"make_seeds: no bytes captured for {name}", file=sys.stderr)
    finally:
        server.kill()
        server.wait()


def main():
    if "--check" in sys.argv:
        missing = [t for t in TARGETS
                   if not os.path.isdir(os.path.join(CORPUS, t)) or
                   not os.listdir(os.path.join(CORPUS, t))]
        if missing:
            print("make_seeds: empty corpora: " + " ".join(missing), file=sys.stderr)
            return 1
        return 0
    for target in TARGETS:
        shutil.rmtree(os.path.join(CORPUS, target), ignore_errors=True)
    config_seeds()
    value_seeds()
    proxy_seeds()
    python_hello_seeds()
    openssl_seeds()
    for target in TARGETS:
        d = os.path.join(CORPUS, target)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"make_seeds: {target}: {len(os.listdir(d))} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
