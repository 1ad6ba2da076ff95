#!/usr/bin/env python3
"""SNI routing (issue 5): [[service.route]] tables send exact and wildcard (one extra label)
server names to their own backends (an exact name wins over a wildcard listed before it; names
match without regard to case), with their own proxy_protocol and balance; a name no route
matches goes to the service's own `connect`; a service without `connect` refuses it with an
unrecognized_name alert (Python sees UNRECOGNIZED_NAME), counted as
ferry_handshake_failures_total{reason="unknown_sni"}."""

import os
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import peers as P  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("routing")
tmp = H.make_temp_dir()
pki = H.Pki(tmp, "ca")
NAMES = ["api.example.com", "*.example.com", "a.b.example.com", "example.com", "other.test",
         "pp.test", "fo.test", "localhost"]
crt, key = pki.issue("routing", subject="/CN=localhost",
                     sans=[f"DNS:{n}" for n in NAMES] + ["IP:127.0.0.1"])
CTX = H.client_context(pki.ca_crt)

B = {n: Backend().start() for n in ("default", "api", "wild", "fo", "other_api")}
DEAD = H.free_port()
receiver = ferry = None  # started in main


def addr(port):
    return f"127.0.0.1:{port}"


def routes(pp_port):
    return [
        # the wildcard first: an exact name still wins over it, whatever the order
        {"sni": "*.example.com", "connect": [addr(B["wild"].port)]},
        {"sni": "api.example.com", "connect": [addr(B["api"].port)]},
        {"sni": "pp.test", "connect": [addr(pp_port)], "proxy_protocol": "v2"},
        {"sni": "fo.test", "connect": [addr(DEAD), addr(B["fo"].port)], "balance": "failover"},
    ]


def start_ferry(pp_port):
    r = H.service("r", H.free_port(), B["default"].port, crt, key, route=routes(pp_port))
    nd = H.service("nodefault", H.free_port(), 0, crt, key,
                   route=[{"sni": "api.example.com", "connect": [addr(B["other_api"].port)]}])
    del nd["connect"]
    return H.Ferry(tmp, [r, nd], workers=1).start()


def port(name):
    return ("127.0.0.1", ferry.port(name))


def goes_to(sni, backend_name, service="r"):
    """A client with SNI `sni` (None: no SNI) reaches backend B[backend_name]; the access line
    names that backend and the SNI."""
    accepted = {n: b.accepted for n, b in B.items()}
    off = ferry.log_offset()
    info = P.echo(port(service), CTX, b"to " + backend_name.encode(),
                  server_hostname=sni if sni is not None else "127.0.0.1")
    moved = {n for n, b in B.items() if b.accepted != accepted[n]}
    ferry.check(moved == {backend_name},
                f"SNI {sni!r}: backends that got the connection: {sorted(moved)}, expected "
                f"{backend_name}")
    c = P.client_addr(info["local"])
    a = P.wait_access(ferry, off, lambda a: a.get("client") == c, what=f"access line of {c}")
    want = addr(B[backend_name].port)
    ferry.check(a.get("backend") == want, f"SNI {sni!r}: access line backend={a.get('backend')},"
                                          f" expected {want}")
    ferry.check(a.get("sni", "").lower() == (sni.lower() if sni is not None else "-"),
                f"access line sni={a.get('sni')}, expected {sni}")


def normal_client_works():
    goes_to("localhost", "default")


@S.test
def exact_route():
    goes_to("api.example.com", "api")


@S.test
def server_names_match_without_regard_to_case():
    goes_to("API.Example.COM", "api")
    goes_to("WWW.example.Com", "wild")


@S.test
def wildcard_route_one_label():
    goes_to("www.example.com", "wild")
    goes_to("x-1.example.com", "wild")


@S.test
def wildcard_does_not_match_two_labels_or_the_apex():
    goes_to("a.b.example.com", "default")
    goes_to("example.com", "default")


@S.test
def no_match_goes_to_the_default_connect():
    goes_to("other.test", "default")
    goes_to(None, "default")  # no SNI at all


@S.test
def route_metrics_label_route_backends():
    m = ferry.scrape()
    for n in ("api", "wild", "default"):
        v = H.mget(m, "ferry_backend_connections_total", service="r", backend=addr(B[n].port))
        ferry.check(v >= 1, f"ferry_backend_connections_total{{service=r,backend="
                            f"{addr(B[n].port)}}} is {v}")


@S.test
def route_with_its_own_balance():
    before = ferry.scrape()
    for _ in range(5):
        goes_to("fo.test", "fo")
    m = ferry.scrape()
    d = P.delta(before, m, "ferry_backend_connect_failures_total", service="r",
                backend=addr(DEAD))
    ferry.check(d == 3, f"failures of the route's dead backend moved by {d}, expected 3 "
                        f"(max_fails, then skipped)")
    d = P.delta(before, m, "ferry_connections_closed_total", service="r",
                reason="backend_connect_failed")
    ferry.check(d == 0, f"{d} clients of the failover route were closed")


@S.test
def route_with_its_own_proxy_protocol():
    n0 = receiver.count()
    off = ferry.log_offset()
    with P.tls_connect(port("r"), CTX, server_hostname="pp.test") as s:
        local = s.getsockname()
        s.sendall(b"through a PROXY route")
        got = H.recv_exact(s, 21)
    ferry.check(got == b"through a PROXY route", f"echo through the PROXY route got {got!r}")
    recs = receiver.wait_records(n0 + 1)
    ferry.check(len(recs) == n0 + 1, f"the PROXY receiver saw {len(recs) - n0} connections")
    rec = recs[n0]
    ferry.check(rec["error"] is None, f"the route's PROXY header did not parse: {rec['error']}")
    h = rec["header"]
    ferry.check(h.get("version") == 2, f"PROXY version {h.get('version')}, the route says v2")
    ferry.check((h.get("src_addr"), h.get("src_port")) == (local[0], local[1]),
                f"header source {h.get('src_addr')}:{h.get('src_port')}, the client is "
                f"{local[0]}:{local[1]}")
    ferry.check(h.get("authority") == "pp.test",
                f"AUTHORITY TLV {h.get('authority')!r}, the SNI was pp.test")
    P.wait_access(ferry, off, lambda a: a.get("client") == P.client_addr(local)
                  and a.get("backend") == addr(receiver.port), what="access line of the route")
    # the default connect has no proxy_protocol: the plain backend gets no header
    goes_to("other.test", "default")


def expect_unknown_sni(sni):
    before = ferry.scrape()
    raw = P.sock_connect(port("nodefault"))
    err = None
    try:
        s = CTX.wrap_socket(raw, server_hostname=sni if sni is not None else "127.0.0.1")
        s.close()
    except ssl.SSLError as e:
        err = e
    except OSError as e:
        ferry.fail(f"SNI {sni!r}: the handshake ended without an alert: {e!r}")
    finally:
        raw.close()
    ferry.check(err is not None, f"SNI {sni!r}: the handshake succeeded on a service without "
                                 f"a route for it and without connect")
    ferry.check("UNRECOGNIZED_NAME" in str(err) or "alert number 112" in str(err),
                f"SNI {sni!r}: the client saw {err!r}, expected an unrecognized_name alert")
    m = ferry.wait_metric(
        lambda m: P.delta(before, m, "ferry_handshake_failures_total", service="nodefault",
                          reason="unknown_sni") >= 1,
        what="ferry_handshake_failures_total{service=nodefault,reason=unknown_sni} to move")
    time.sleep(0.2)
    m = ferry.scrape()
    d = P.delta(before, m, "ferry_handshake_failures_total", service="nodefault")
    ferry.check(d == 1, f"ferry_handshake_failures_total{{service=nodefault}} moved by {d} "
                        f"(all reasons), expected 1")
    d = P.delta(before, m, "ferry_backend_connections_total", service="nodefault")
    ferry.check(d == 0, f"a refused name reached a backend ({d})")


@S.test
def no_match_without_default_is_unrecognized_name():
    expect_unknown_sni("other.test")
    expect_unknown_sni("a.b.example.com")
    # a matching name on the same service still works
    acc = B["other_api"].accepted
    P.echo(port("nodefault"), CTX, b"routed", server_hostname="api.example.com")
    ferry.check(B["other_api"].accepted == acc + 1, "api.example.com did not reach its route")
    normal_client_works()


@S.test
def no_sni_without_default_is_refused():
    expect_unknown_sni(None)
    normal_client_works()


@S.test
def sigterm_exits_0():
    ferry.stop()
    for b in B.values():
        b.stop()
    receiver.close()


if __name__ == "__main__":
    if H.STANDIN:
        print("test_routing needs the real ferry (logs and metrics)")
        sys.exit(0)
    receiver = P.ProxyReceiver()
    ferry = start_ferry(receiver.port)
    S.main()
