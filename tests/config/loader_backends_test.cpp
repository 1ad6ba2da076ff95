// Loader tests for the keys of config/loader_backends.cpp: backends and balancing, SNI routes,
// the PROXY protocol both ways, limits, access lists, socket options, Unix listeners; and
// [global] max_open_files. Tables: a TOML snippet in, the exact error lines out.
#include <doctest/doctest.h>

#include <sys/socket.h>

#include <filesystem>
#include <initializer_list>
#include <string>

#include "config/config.h"

using namespace std::chrono_literals;
using ferry::load_config_string;

namespace {

struct Case {
  std::string toml;
  std::string errors;  // every ConfigError::str(), one per line; "" for a valid config
};

std::string errors_of(std::string_view toml) {
  const ferry::LoadResult result = load_config_string(toml, "t.toml");
  std::string out;
  for (const ferry::ConfigError& e : result.errors) out += e.str() + "\n";
  CHECK(result.config.has_value() == result.errors.empty());
  return out;
}

void check_table(std::initializer_list<Case> cases) {
  for (const Case& c : cases) {
    CAPTURE(c.toml);
    CHECK(errors_of(c.toml) == c.errors);
  }
}

// A server-mode [[service]] without connect on lines 1-4, then `extra` from line 5.
std::string server_with(const std::string& extra) {
  return R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
cert = "web.crt"
)" + extra;
}

// A valid server-mode [[service]] on lines 1-5, then `extra` from line 6.
std::string web_with(const std::string& extra) {
  return server_with("connect = \"127.0.0.1:8080\"\n" + extra);
}

// A client-mode [[service]] without connect on lines 1-4, then `extra` from line 5.
std::string client_with(const std::string& extra) {
  return R"([[service]]
name = "out"
mode = "client"
accept = "127.0.0.1:2525"
)" + extra;
}

// A valid server-mode [[service]] on a Unix socket on lines 1-5, then `extra` from line 6.
std::string unix_with(const std::string& extra) {
  return R"([[service]]
name = "sock"
accept = "unix:/run/ferry/web.sock"
connect = "127.0.0.1:8080"
cert = "web.crt"
)" + extra;
}

// The only service of a config that must load without errors.
ferry::ServiceConfig service_of(const std::string& toml) {
  const ferry::LoadResult result = load_config_string(toml, "t.toml");
  std::string errors;
  for (const ferry::ConfigError& e : result.errors) errors += e.str() + "\n";
  CAPTURE(errors);
  REQUIRE(result.config);
  REQUIRE(result.config->services.size() == 1);
  return result.config->services[0];
}

// "connect = [" with n distinct backends "]".
std::string n_backends(int n) {
  std::string out = "connect = [";
  for (int i = 0; i < n; ++i) {
    out += (i ? ", " : "") + std::string("\"10.0.0.1:") + std::to_string(1000 + i) + "\"";
  }
  return out + "]\n";
}

}  // namespace

// ---- connect ----------------------------------------------------------------------------------

TEST_CASE("backends: connect as one string is one backend with its position") {
  const ferry::ServiceConfig web = service_of(web_with(""));
  REQUIRE(web.connect.backends.size() == 1);
  CHECK(web.connect.backends[0].str() == "127.0.0.1:8080");
  CHECK_FALSE(web.connect.backends[0].is_unix());
  CHECK(web.connect.backends[0].tcp.host == "127.0.0.1");
  CHECK(web.connect.backends[0].tcp.port == 8080);
  REQUIRE(web.connect.positions.size() == 1);
  CHECK(web.connect.positions[0].file == "t.toml");
  CHECK(web.connect.positions[0].line == 5);
  CHECK(web.connect.positions[0].column == 11);
  CHECK(web.connect_pos.line == 5);
  CHECK(web.connect_pos.column == 11);
  // The defaults of the other keys of this file.
  CHECK(web.connect.balance == ferry::Balance::round_robin);
  CHECK(web.connect.proxy_protocol == ferry::ProxyProtocol::none);
  CHECK(web.routes.empty());
  CHECK(web.max_fails == 3);
  CHECK(web.fail_timeout == 10s);
  CHECK_FALSE(web.accept_proxy);
  CHECK(web.accept_proxy_from.empty());
  CHECK(web.max_connections == 0);
  CHECK(web.allow.empty());
  CHECK(web.deny.empty());
  CHECK(web.tcp_keepalive == 0ms);
  CHECK(web.backlog == 1024);
  CHECK(web.accept_unix.empty());
  CHECK(web.unix_mode == -1);
  CHECK(web.unix_owner.empty());
  CHECK(web.unix_group.empty());
}

TEST_CASE("backends: connect as an array of host:port, [v6]:port and unix:/path") {
  const ferry::ServiceConfig web = service_of(server_with(R"(connect = [
  "10.0.0.1:8080",
    "[::1]:8081",
  "unix:/run/app.sock",
]
)"));
  REQUIRE(web.connect.backends.size() == 3);
  CHECK(web.connect.backends[0].str() == "10.0.0.1:8080");
  CHECK(web.connect.backends[1].tcp.host == "::1");
  CHECK(web.connect.backends[1].tcp.port == 8081);
  CHECK(web.connect.backends[1].str() == "[::1]:8081");
  CHECK(web.connect.backends[2].is_unix());
  CHECK(web.connect.backends[2].unix_path == "/run/app.sock");
  CHECK(web.connect.backends[2].str() == "unix:/run/app.sock");
  REQUIRE(web.connect.positions.size() == 3);
  CHECK(web.connect.positions[0].line == 6);
  CHECK(web.connect.positions[0].column == 3);
  CHECK(web.connect.positions[1].line == 7);
  CHECK(web.connect.positions[1].column == 5);
  CHECK(web.connect.positions[2].line == 8);
  CHECK(web.connect_pos.line == 5);
  CHECK(web.connect_pos.column == 11);
}

TEST_CASE("backends: connect of the wrong type") {
  check_table({
      {server_with("connect = 8080\n"),
       "t.toml:5:11: service[0].connect: expected a string or an array of strings, got "
       "integer\n"},
      {server_with("connect = {host = \"a\"}\n"),
       "t.toml:5:11: service[0].connect: expected a string or an array of strings, got table\n"},
      {server_with("connect = [\"127.0.0.1:8080\", 8081, [\"127.0.0.1:8082\"]]\n"),
       "t.toml:5:30: service[0].connect[1]: expected a string, got integer\n"
       "t.toml:5:36: service[0].connect[2]: expected a string, got array\n"},
  });
}

TEST_CASE("backends: bad addresses in connect are reported at each string") {
  check_table({
      {server_with(
           "connect = [\"127.0.0.1:8080\", \"localhost\", \"::1:80\", \"unix:run/a.sock\"]\n"),
       "t.toml:5:30: service[0].connect[1]: bad address \"localhost\": missing port (use "
       "host:port or [v6addr]:port)\n"
       "t.toml:5:43: service[0].connect[2]: bad address \"::1:80\": IPv6 addresses need "
       "brackets, e.g. [::1]:443\n"
       "t.toml:5:53: service[0].connect[3]: bad address \"unix:run/a.sock\": unix: needs an "
       "absolute path\n"},
      {server_with("connect = \"unix:\"\n"),
       "t.toml:5:11: service[0].connect: bad address \"unix:\": unix: needs an absolute path\n"},
      {server_with("connect = \"unix:/" + std::string(107, 'a') + "\"\n"),
       "t.toml:5:11: service[0].connect: bad address \"unix:/" + std::string(107, 'a') +
           "\": unix socket path longer than 107 bytes\n"},
      // 107 bytes is sockaddr_un's limit, and fits.
      {server_with("connect = \"unix:/" + std::string(106, 'a') + "\"\n"), ""},
      {server_with("connect = \"[fe80::1%eth0]:8080\"\n"), ""},
  });
}

TEST_CASE("backends: connect must not be empty nor list one backend twice") {
  check_table({
      {server_with("connect = []\n"), "t.toml:5:11: service[0].connect: must not be empty\n"},
      {server_with(R"(connect = [
  "127.0.0.1:8080",
  "unix:/run/a.sock",
  "127.0.0.1:8080",
  "unix:/run/a.sock",
  "127.0.0.1:8080",
]
)"),
       "t.toml:8:3: service[0].connect[2]: duplicate backend 127.0.0.1:8080 (first at line 6)\n"
       "t.toml:9:3: service[0].connect[3]: duplicate backend unix:/run/a.sock (first at line "
       "7)\n"
       "t.toml:10:3: service[0].connect[4]: duplicate backend 127.0.0.1:8080 (first at line "
       "6)\n"},
      // Compared as written: another port, another host name or path is another backend.
      {server_with("connect = [\"127.0.0.1:8080\", \"127.0.0.1:8081\", \"localhost:8080\", "
                   "\"unix:/run/a\", \"unix:/run/b\"]\n"),
       ""},
  });
  // A duplicate is not kept as a second backend.
  const auto result = load_config_string(
      server_with("connect = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n"), "t.toml");
  REQUIRE(result.partial);
  CHECK(result.partial->services.at(0).connect.backends.size() == 1);
}

TEST_CASE("backends: at most 64 per connect") {
  const ferry::ServiceConfig web = service_of(server_with(n_backends(64)));
  CHECK(web.connect.backends.size() == 64);
  CHECK(web.connect.positions.size() == 64);
  check_table({
      {server_with(n_backends(65)), "t.toml:5:11: service[0].connect: at most 64 backends\n"},
      {server_with("[[service.route]]\nsni = \"a.example\"\n" + n_backends(65)),
       "t.toml:7:11: service[0].route[0].connect: at most 64 backends\n"},
  });
}

TEST_CASE("backends: a missing connect is reported at the [[service]] header") {
  check_table({
      {server_with(""), "t.toml:1:1: service[0].connect: missing required key\n"},
      {client_with(""), "t.toml:1:1: service[0].connect: missing required key\n"},
      // Server mode: routes alone are enough (unmatched names are refused).
      {server_with(R"([[service.route]]
sni = "api.example.com"
connect = "127.0.0.1:9000"
)"),
       ""},
      // ... but not when no route could be read.
      {server_with("route = []\n"), "t.toml:1:1: service[0].connect: missing required key\n"},
  });
  const ferry::ServiceConfig web = service_of(server_with(R"([[service.route]]
sni = "api.example.com"
connect = "127.0.0.1:9000"
)"));
  CHECK(web.connect.backends.empty());
  CHECK(web.routes.size() == 1);
}

// ---- balance, max_fails, fail_timeout -------------------------------------------------------

TEST_CASE("backends: balance, max_fails and fail_timeout parse") {
  CHECK(service_of(web_with("balance = \"round-robin\"\n")).connect.balance ==
        ferry::Balance::round_robin);
  CHECK(service_of(web_with("balance = \"failover\"\n")).connect.balance ==
        ferry::Balance::failover);
  CHECK(service_of(web_with("balance = \"least-connections\"\n")).connect.balance ==
        ferry::Balance::least_connections);
  const ferry::ServiceConfig web = service_of(web_with(R"(max_fails = 1
fail_timeout = "1m30s"
)"));
  CHECK(web.max_fails == 1);
  CHECK(web.fail_timeout == 90s);
  CHECK(service_of(web_with("max_fails = 1000\n")).max_fails == 1000);
}

TEST_CASE("backends: bad balance, max_fails and fail_timeout") {
  check_table({
      {web_with("balance = \"round_robin\"\n"),
       "t.toml:6:11: service[0].balance: bad balance \"round_robin\" (use round-robin, failover "
       "or least-connections)\n"},
      {web_with("balance = \"random\"\n"),
       "t.toml:6:11: service[0].balance: bad balance \"random\" (use round-robin, failover or "
       "least-connections)\n"},
      {web_with("balance = 1\n"),
       "t.toml:6:11: service[0].balance: expected a string, got integer\n"},
      {web_with("max_fails = 0\n"),
       "t.toml:6:13: service[0].max_fails: must be between 1 and 1000\n"},
      {web_with("max_fails = 1001\n"),
       "t.toml:6:13: service[0].max_fails: must be between 1 and 1000\n"},
      {web_with("max_fails = -3\n"),
       "t.toml:6:13: service[0].max_fails: must be between 1 and 1000\n"},
      {web_with("max_fails = \"3\"\n"),
       "t.toml:6:13: service[0].max_fails: expected an integer, got string\n"},
      {web_with("fail_timeout = \"10\"\n"),
       "t.toml:6:16: service[0].fail_timeout: bad duration \"10\": missing unit after \"10\" (use "
       "ms, s, m, h)\n"},
      {web_with("fail_timeout = 10\n"),
       "t.toml:6:16: service[0].fail_timeout: expected a duration string such as \"10s\", got "
       "integer\n"},
  });
}

// ---- [[service.route]] ------------------------------------------------------------------------

TEST_CASE("routes: parse with lower-cased names, positions and their own backends") {
  const ferry::ServiceConfig web = service_of(web_with(R"(balance = "failover"
proxy_protocol = "v1"
[[service.route]]
sni = "API.Example.COM"
connect = ["127.0.0.1:9000", "unix:/run/api.sock"]
[[service.route]]
sni = "*.Example.com"
connect = "127.0.0.1:9001"
balance = "least-connections"
proxy_protocol = "v2"
[[service.route]]
sni = "plain.example.com"
connect = "127.0.0.1:9002"
proxy_protocol = "none"
balance = "round-robin"
)"));
  CHECK(web.connect.balance == ferry::Balance::failover);
  CHECK(web.connect.proxy_protocol == ferry::ProxyProtocol::v1);
  REQUIRE(web.routes.size() == 3);

  const ferry::RouteConfig& api = web.routes[0];
  CHECK(api.sni == "api.example.com");
  CHECK(api.pos.line == 8);
  CHECK(api.pos.column == 1);
  REQUIRE(api.group.backends.size() == 2);
  CHECK(api.group.backends[0].str() == "127.0.0.1:9000");
  CHECK(api.group.backends[1].unix_path == "/run/api.sock");
  REQUIRE(api.group.positions.size() == 2);
  CHECK(api.group.positions[0].line == 10);
  CHECK(api.group.positions[0].column == 12);
  CHECK(api.group.positions[1].column == 30);
  // Inherited from the service.
  CHECK(api.group.balance == ferry::Balance::failover);
  CHECK(api.group.proxy_protocol == ferry::ProxyProtocol::v1);

  const ferry::RouteConfig& wild = web.routes[1];
  CHECK(wild.sni == "*.example.com");
  CHECK(wild.pos.line == 11);
  CHECK(wild.group.balance == ferry::Balance::least_connections);
  CHECK(wild.group.proxy_protocol == ferry::ProxyProtocol::v2);

  // A route's own "none" and "round-robin" override the service's.
  const ferry::RouteConfig& plain = web.routes[2];
  CHECK(plain.group.balance == ferry::Balance::round_robin);
  CHECK(plain.group.proxy_protocol == ferry::ProxyProtocol::none);

  // The service's keys may come after its routes in an inline form; inheritance still holds.
  const ferry::ServiceConfig inline_web = service_of(
      R"(service = [{name = "web", accept = "0.0.0.0:8443", cert = "web.crt", route = [
  {sni = "a.example", connect = "127.0.0.1:9000"},
], balance = "failover", proxy_protocol = "v2"}]
)");
  REQUIRE(inline_web.routes.size() == 1);
  CHECK(inline_web.routes[0].pos.line == 2);
  CHECK(inline_web.routes[0].pos.column == 3);
  CHECK(inline_web.routes[0].group.balance == ferry::Balance::failover);
  CHECK(inline_web.routes[0].group.proxy_protocol == ferry::ProxyProtocol::v2);
}

TEST_CASE("routes: sni and connect are required") {
  check_table({
      {web_with(R"([[service.route]]
connect = "127.0.0.1:9000"
[[service.route]]
sni = "b.example"
[[service.route]]
)"),
       "t.toml:6:1: service[0].route[0].sni: missing required key\n"
       "t.toml:8:1: service[0].route[1].connect: missing required key\n"
       "t.toml:10:1: service[0].route[2].sni: missing required key\n"
       "t.toml:10:1: service[0].route[2].connect: missing required key\n"},
      {web_with(R"([[service.route]]
sni = "a.example"
connect = []
)"),
       "t.toml:8:11: service[0].route[0].connect: must not be empty\n"},
  });
}

TEST_CASE("routes: values of the wrong type and unknown keys") {
  check_table({
      {web_with("route = \"a.example\"\n"),
       "t.toml:6:9: service[0].route: expected an array of tables ([[service.route]]), got "
       "string\n"},
      {web_with("[service.route]\nsni = \"a.example\"\nconnect = \"127.0.0.1:9000\"\n"),
       "t.toml:6:1: service[0].route: expected an array of tables ([[service.route]]), got "
       "table\n"},
      {web_with("route = [\"a.example\"]\n"),
       "t.toml:6:10: service[0].route[0]: expected a table, got string\n"},
      {web_with(R"([[service.route]]
sni = ["a.example"]
connect = 9000
balance = true
proxy_protocol = 2
certificate = "a.crt"
)"),
       "t.toml:7:7: service[0].route[0].sni: expected a string, got array\n"
       "t.toml:8:11: service[0].route[0].connect: expected a string or an array of strings, got "
       "integer\n"
       "t.toml:9:11: service[0].route[0].balance: expected a string, got boolean\n"
       "t.toml:10:18: service[0].route[0].proxy_protocol: expected a string, got integer\n"
       "t.toml:11:1: service[0].route[0].certificate: unknown key\n"},
      {web_with(R"([[service.route]]
sni = "a.example"
connect = ["127.0.0.1:9000", "a.example", "127.0.0.1:9000"]
balance = "first"
proxy_protocol = "v3"
)"),
       "t.toml:8:30: service[0].route[0].connect[1]: bad address \"a.example\": missing port "
       "(use host:port or [v6addr]:port)\n"
       "t.toml:8:43: service[0].route[0].connect[2]: duplicate backend 127.0.0.1:9000 (first at "
       "line 8)\n"
       "t.toml:9:11: service[0].route[0].balance: bad balance \"first\" (use round-robin, "
       "failover or least-connections)\n"
       "t.toml:10:18: service[0].route[0].proxy_protocol: bad version \"v3\" (use v1, v2 or "
       "none)\n"},
  });
}

TEST_CASE("routes: server names must be valid, wildcards exactly *.name") {
  auto route = [](const std::string& sni) {
    return web_with("[[service.route]]\nsni = \"" + sni + "\"\nconnect = \"127.0.0.1:9000\"\n");
  };
  auto bad = [](const std::string& sni) {
    return "t.toml:7:7: service[0].route[0].sni: bad server name \"" + sni +
           "\" (a DNS name, or *.example.com for exactly one more label)\n";
  };
  check_table({
      {route("*."), bad("*.")},
      {route("*"), bad("*")},
      {route("a.*.b"), bad("a.*.b")},
      {route("*example.com"), bad("*example.com")},
      {route("*.*.example.com"), bad("*.*.example.com")},
      {route("api.*"), bad("api.*")},
      {route(""), bad("")},
      {route(".example.com"), bad(".example.com")},
      {route("example.com."), bad("example.com.")},
      {route("a..example.com"), bad("a..example.com")},
      {route("a example.com"), bad("a example.com")},
      {route("10.0.0.1:443"), bad("10.0.0.1:443")},
      {route(std::string(254, 'a')), bad(std::string(254, 'a'))},
      {route("*.example.com"), ""},
      {route("*.com"), ""},
      {route("localhost"), ""},
      {route("xn--bcher-kva.example"), ""},
      {route("under_score.example"), ""},
  });
}

TEST_CASE("routes: one route per server name, compared in lower case") {
  check_table({
      {web_with(R"([[service.route]]
sni = "api.example.com"
connect = "127.0.0.1:9000"
[[service.route]]
sni = "*.example.com"
connect = "127.0.0.1:9001"
[[service.route]]
connect = "127.0.0.1:9002"
sni = "API.example.com"
[[service.route]]
sni = "*.EXAMPLE.com"
connect = "127.0.0.1:9003"
)"),
       "t.toml:14:7: service[0].route[2].sni: duplicate route for \"api.example.com\" (first at "
       "line 7)\n"
       "t.toml:16:7: service[0].route[3].sni: duplicate route for \"*.example.com\" (first at "
       "line 10)\n"},
      // A wildcard and the name it is built on are different routes.
      {web_with(R"([[service.route]]
sni = "example.com"
connect = "127.0.0.1:9000"
[[service.route]]
sni = "*.example.com"
connect = "127.0.0.1:9001"
)"),
       ""},
  });
}

// ---- proxy_protocol, accept_proxy, accept_proxy_from ------------------------------------------

TEST_CASE("PROXY protocol keys parse") {
  CHECK(service_of(web_with("proxy_protocol = \"v1\"\n")).connect.proxy_protocol ==
        ferry::ProxyProtocol::v1);
  CHECK(service_of(web_with("proxy_protocol = \"v2\"\n")).connect.proxy_protocol ==
        ferry::ProxyProtocol::v2);
  CHECK(service_of(web_with("proxy_protocol = \"none\"\n")).connect.proxy_protocol ==
        ferry::ProxyProtocol::none);
  const ferry::ServiceConfig web = service_of(web_with(R"(accept_proxy = true
accept_proxy_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]
)"));
  CHECK(web.accept_proxy);
  REQUIRE(web.accept_proxy_from.size() == 4);
  CHECK(web.accept_proxy_from[0].str() == "10.0.0.0/8");
  CHECK(web.accept_proxy_from[1].str() == "192.0.2.7/32");
  CHECK(web.accept_proxy_from[2].str() == "2001:db8::/32");
  CHECK(web.accept_proxy_from[3].str() == "::1/128");
  CHECK(web.accept_proxy_from[3].family == AF_INET6);
  // accept_proxy alone: any peer may send a header.
  const ferry::ServiceConfig any = service_of(web_with("accept_proxy = true\n"));
  CHECK(any.accept_proxy);
  CHECK(any.accept_proxy_from.empty());
  CHECK_FALSE(service_of(web_with("accept_proxy = false\n")).accept_proxy);
}

TEST_CASE("PROXY protocol keys: bad values") {
  check_table({
      {web_with("proxy_protocol = \"V1\"\n"),
       "t.toml:6:18: service[0].proxy_protocol: bad version \"V1\" (use v1, v2 or none)\n"},
      {web_with("proxy_protocol = \"\"\n"),
       "t.toml:6:18: service[0].proxy_protocol: bad version \"\" (use v1, v2 or none)\n"},
      {web_with("proxy_protocol = 2\n"),
       "t.toml:6:18: service[0].proxy_protocol: expected a string, got integer\n"},
      {web_with("proxy_protocol = true\n"),
       "t.toml:6:18: service[0].proxy_protocol: expected a string, got boolean\n"},
      {web_with("accept_proxy = \"yes\"\n"),
       "t.toml:6:16: service[0].accept_proxy: expected a boolean, got string\n"},
      {web_with("accept_proxy = true\naccept_proxy_from = \"10.0.0.0/8\"\n"),
       "t.toml:7:21: service[0].accept_proxy_from: expected an array of strings, got string\n"},
      {web_with("accept_proxy = true\naccept_proxy_from = [\"10.0.0.1/8\", \"\", 10]\n"),
       "t.toml:7:22: service[0].accept_proxy_from[0]: bad address range \"10.0.0.1/8\": host "
       "bits set below the prefix (did you mean 10.0.0.0/8?)\n"
       "t.toml:7:36: service[0].accept_proxy_from[1]: must not be empty\n"
       "t.toml:7:40: service[0].accept_proxy_from[2]: expected a string, got integer\n"},
  });
}

TEST_CASE("PROXY protocol keys: accept_proxy_from needs accept_proxy = true") {
  check_table({
      {web_with("accept_proxy_from = [\"10.0.0.0/8\"]\n"),
       "t.toml:6:21: service[0].accept_proxy_from: needs accept_proxy = true\n"},
      {web_with("accept_proxy = false\naccept_proxy_from = [\"10.0.0.0/8\"]\n"),
       "t.toml:7:21: service[0].accept_proxy_from: needs accept_proxy = true\n"},
      // A mistyped accept_proxy is reported once, not again through accept_proxy_from.
      {web_with("accept_proxy = \"true\"\naccept_proxy_from = [\"10.0.0.0/8\"]\n"),
       "t.toml:6:16: service[0].accept_proxy: expected a boolean, got string\n"},
      // Order in the table does not matter.
      {web_with("accept_proxy_from = [\"10.0.0.0/8\"]\naccept_proxy = true\n"), ""},
  });
}

TEST_CASE("PROXY protocol keys and routes are for server mode only") {
  check_table({
      {client_with(R"(connect = "mail.example.com:465"
proxy_protocol = "v2"
accept_proxy = true
accept_proxy_from = ["10.0.0.0/8"]
[[service.route]]
sni = "a.example"
connect = "127.0.0.1:9000"
)"),
       "t.toml:6:18: service[0].proxy_protocol: only for mode = \"server\" (the header goes to "
       "the plaintext backend)\n"
       "t.toml:7:16: service[0].accept_proxy: only for mode = \"server\"\n"
       "t.toml:8:21: service[0].accept_proxy_from: only for mode = \"server\"\n"
       "t.toml:9:1: service[0].route: only for mode = \"server\"\n"},
      // A bad value is not reported on top of the mode error.
      {client_with(R"(connect = "mail.example.com:465"
proxy_protocol = "v9"
)"),
       "t.toml:6:18: service[0].proxy_protocol: only for mode = \"server\" (the header goes to "
       "the plaintext backend)\n"},
      // Routes are not a connect: without one, that is missing too.
      {client_with(R"([[service.route]]
sni = "a.example"
connect = "127.0.0.1:9000"
)"),
       "t.toml:1:1: service[0].connect: missing required key\n"
       "t.toml:5:1: service[0].route: only for mode = \"server\"\n"},
  });
}

// ---- limits, access lists, socket options -----------------------------------------------------

TEST_CASE("limits, access lists and socket options parse") {
  const ferry::ServiceConfig web = service_of(web_with(R"(max_connections = 10000
allow = ["10.0.0.0/8", "192.168.1.10", "fd00::/8"]
deny = ["10.1.0.0/16", "0.0.0.0/0", "::/0"]
tcp_keepalive = "2m"
backlog = 4096
)"));
  CHECK(web.max_connections == 10000);
  REQUIRE(web.allow.size() == 3);
  CHECK(web.allow[0].str() == "10.0.0.0/8");
  CHECK(web.allow[0].family == AF_INET);
  CHECK(web.allow[0].prefix == 8);
  CHECK(web.allow[1].str() == "192.168.1.10/32");
  CHECK(web.allow[2].str() == "fd00::/8");
  REQUIRE(web.deny.size() == 3);
  CHECK(web.deny[0].str() == "10.1.0.0/16");
  CHECK(web.deny[1].prefix == 0);
  CHECK(web.deny[2].str() == "::/0");
  CHECK(web.tcp_keepalive == 2min);
  CHECK(web.backlog == 4096);

  CHECK(service_of(web_with("tcp_keepalive = \"off\"\n")).tcp_keepalive == 0ms);
  CHECK(service_of(web_with("tcp_keepalive = \"1s\"\n")).tcp_keepalive == 1s);
  CHECK(service_of(web_with("max_connections = 0\n")).max_connections == 0);
  CHECK(service_of(web_with("max_connections = 10000000\n")).max_connections == 10'000'000);
  CHECK(service_of(web_with("backlog = 1\n")).backlog == 1);
  CHECK(service_of(web_with("backlog = 65535\n")).backlog == 65535);
  CHECK(service_of(web_with("allow = []\ndeny = []\n")).allow.empty());
  // Client mode takes them too.
  const ferry::ServiceConfig out = service_of(client_with(R"(connect = "mail.example.com:465"
max_connections = 5
allow = ["127.0.0.1"]
tcp_keepalive = "30s"
balance = "failover"
max_fails = 2
)"));
  CHECK(out.max_connections == 5);
  CHECK(out.allow.size() == 1);
  CHECK(out.tcp_keepalive == 30s);
  CHECK(out.connect.balance == ferry::Balance::failover);
  CHECK(out.max_fails == 2);
}

TEST_CASE("limits and socket options: wrong types and out-of-range integers") {
  check_table({
      {web_with("max_connections = -1\n"),
       "t.toml:6:19: service[0].max_connections: must be between 0 and 10000000\n"},
      {web_with("max_connections = 10000001\n"),
       "t.toml:6:19: service[0].max_connections: must be between 0 and 10000000\n"},
      {web_with("max_connections = 1e3\n"),
       "t.toml:6:19: service[0].max_connections: expected an integer, got float\n"},
      {web_with("backlog = 0\n"), "t.toml:6:11: service[0].backlog: must be between 1 and 65535\n"},
      {web_with("backlog = 65536\n"),
       "t.toml:6:11: service[0].backlog: must be between 1 and 65535\n"},
      {web_with("backlog = \"128\"\n"),
       "t.toml:6:11: service[0].backlog: expected an integer, got string\n"},
      {web_with("tcp_keepalive = \"500ms\"\n"),
       "t.toml:6:17: service[0].tcp_keepalive: must be at least 1s (or off)\n"},
      {web_with("tcp_keepalive = \"on\"\n"),
       "t.toml:6:17: service[0].tcp_keepalive: bad duration \"on\": missing number before "
       "\"on\"\n"},
      {web_with("tcp_keepalive = 60\n"),
       "t.toml:6:17: service[0].tcp_keepalive: expected a duration string such as \"60s\" or "
       "\"off\", got integer\n"},
      {web_with("tcp_keepalive = false\n"),
       "t.toml:6:17: service[0].tcp_keepalive: expected a duration string such as \"60s\" or "
       "\"off\", got boolean\n"},
  });
}

TEST_CASE("access lists: bad address ranges are reported at each string") {
  check_table({
      {web_with(R"(allow = ["10.0.0.1/8", "10.0.0.0/33", "::1/129", "10.0.0.0/-1", "10.0.0.0/08"]
)"),
       "t.toml:6:10: service[0].allow[0]: bad address range \"10.0.0.1/8\": host bits set below "
       "the prefix (did you mean 10.0.0.0/8?)\n"
       "t.toml:6:24: service[0].allow[1]: bad address range \"10.0.0.0/33\": prefix length 33 is "
       "out of range for IPv4 (0..32)\n"
       "t.toml:6:39: service[0].allow[2]: bad address range \"::1/129\": prefix length 129 is out "
       "of range for IPv6 (0..128)\n"
       "t.toml:6:50: service[0].allow[3]: bad address range \"10.0.0.0/-1\": bad prefix length "
       "\"-1\"\n"
       "t.toml:6:65: service[0].allow[4]: bad address range \"10.0.0.0/08\": bad prefix length "
       "\"08\"\n"},
      {web_with(R"(deny = ["2001:db8::1/32", "300.0.0.1", "example.com", "/8", ""]
)"),
       "t.toml:6:9: service[0].deny[0]: bad address range \"2001:db8::1/32\": host bits set "
       "below the prefix (did you mean 2001:db8::/32?)\n"
       "t.toml:6:27: service[0].deny[1]: bad address range \"300.0.0.1\": bad IPv4 address "
       "\"300.0.0.1\"\n"
       "t.toml:6:40: service[0].deny[2]: bad address range \"example.com\": bad IPv4 address "
       "\"example.com\"\n"
       "t.toml:6:55: service[0].deny[3]: bad address range \"/8\": missing address before '/'\n"
       "t.toml:6:61: service[0].deny[4]: must not be empty\n"},
      // Each error at its own element, also after an element of the wrong type.
      {web_with(R"(allow = [10, "10.0.0.1/8"]
deny = "10.0.0.0/8"
)"),
       "t.toml:6:10: service[0].allow[0]: expected a string, got integer\n"
       "t.toml:6:14: service[0].allow[1]: bad address range \"10.0.0.1/8\": host bits set below "
       "the prefix (did you mean 10.0.0.0/8?)\n"
       "t.toml:7:8: service[0].deny: expected an array of strings, got string\n"},
  });
}

// ---- Unix listeners ---------------------------------------------------------------------------

TEST_CASE("unix listeners: accept = \"unix:/path\" and its socket options") {
  const ferry::ServiceConfig sock = service_of(unix_with(R"(unix_mode = "0660"
unix_owner = "ferry"
unix_group = "www-data"
)"));
  CHECK(sock.accept_unix == "/run/ferry/web.sock");
  CHECK(sock.accept_systemd.empty());
  CHECK(sock.accept_pos.line == 3);
  CHECK(sock.accept_pos.column == 10);
  CHECK(sock.unix_mode == 0660);
  CHECK(sock.unix_owner == "ferry");
  CHECK(sock.unix_group == "www-data");
  CHECK(service_of(unix_with("unix_mode = \"600\"\n")).unix_mode == 0600);
  CHECK(service_of(unix_with("unix_mode = \"0777\"\n")).unix_mode == 0777);
  CHECK(service_of(unix_with("unix_mode = \"000\"\n")).unix_mode == 0);
  CHECK(service_of(unix_with("")).unix_mode == -1);
  // Client mode may listen on a Unix socket as well.
  const ferry::ServiceConfig out = service_of(R"([[service]]
name = "out"
mode = "client"
accept = "unix:/run/ferry/out.sock"
connect = "mail.example.com:465"
unix_mode = "0600"
)");
  CHECK(out.accept_unix == "/run/ferry/out.sock");
  CHECK(out.unix_mode == 0600);
}

TEST_CASE("unix listeners: bad unix_mode, owner and group") {
  auto bad = [](const std::string& mode) {
    return "t.toml:6:13: service[0].unix_mode: bad mode \"" + mode +
           "\" (octal permission bits, e.g. \"0660\")\n";
  };
  check_table({
      {unix_with("unix_mode = \"0o660\"\n"), bad("0o660")},
      {unix_with("unix_mode = \"0668\"\n"), bad("0668")},
      {unix_with("unix_mode = \"1777\"\n"), bad("1777")},
      {unix_with("unix_mode = \"66\"\n"), bad("66")},
      {unix_with("unix_mode = \"00660\"\n"), bad("00660")},
      {unix_with("unix_mode = \"rw-rw----\"\n"), bad("rw-rw----")},
      {unix_with("unix_mode = \"\"\n"), bad("")},
      {unix_with("unix_mode = \"-660\"\n"), bad("-660")},
      {unix_with("unix_mode = \"07777777777777777777\"\n"), bad("07777777777777777777")},
      {unix_with("unix_mode = 0o660\n"),
       "t.toml:6:13: service[0].unix_mode: expected an octal string such as \"0660\", got "
       "integer\n"},
      {unix_with("unix_owner = 0\nunix_group = \"\"\n"),
       "t.toml:6:14: service[0].unix_owner: expected a string, got integer\n"
       "t.toml:7:14: service[0].unix_group: must not be empty\n"},
      {unix_with("unix_owner = \"\"\n"), "t.toml:6:14: service[0].unix_owner: must not be empty\n"},
  });
}

TEST_CASE("unix listeners: unix_* keys need accept = \"unix:/path\"") {
  check_table({
      {web_with(R"(unix_mode = "0660"
unix_owner = "ferry"
unix_group = "ferry"
)"),
       "t.toml:6:13: service[0].unix_mode: only with accept = \"unix:/path\"\n"
       "t.toml:7:14: service[0].unix_owner: only with accept = \"unix:/path\"\n"
       "t.toml:8:14: service[0].unix_group: only with accept = \"unix:/path\"\n"},
      {R"([[service]]
name = "web"
accept = "systemd:web"
connect = "127.0.0.1:8080"
cert = "web.crt"
unix_mode = "0660"
)",
       "t.toml:6:13: service[0].unix_mode: only with accept = \"unix:/path\"\n"},
      // A bad unix: accept is reported once; its socket options are not blamed as well.
      {R"([[service]]
name = "web"
accept = "unix:run/web.sock"
connect = "127.0.0.1:8080"
cert = "web.crt"
unix_mode = "0660"
)",
       "t.toml:3:10: service[0].accept: bad address \"unix:run/web.sock\": unix: needs an "
       "absolute path\n"},
  });
}

TEST_CASE("unix listeners: bad and duplicate socket paths") {
  check_table({
      {R"([[service]]
name = "web"
accept = "unix:web.sock"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:3:10: service[0].accept: bad address \"unix:web.sock\": unix: needs an absolute "
       "path\n"},
      {R"([[service]]
name = "web"
accept = "unix:/)" +
           std::string(108, 's') + R"("
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:3:10: service[0].accept: bad address \"unix:/" + std::string(108, 's') +
           "\": unix socket path longer than 107 bytes\n"},
      {R"([[service]]
name = "web"
accept = "unix:/run/ferry/web.sock"
connect = "127.0.0.1:8080"
cert = "web.crt"
[[service]]
name = "api"
accept = "unix:/run/ferry/web.sock"
connect = "127.0.0.1:8081"
cert = "web.crt"
)",
       "t.toml:8:10: service[1].accept: duplicate accept address unix:/run/ferry/web.sock\n"},
      // Other paths are other sockets; a backend may be another service's socket.
      {R"(service = [
  {name = "a", accept = "unix:/run/a.sock", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "b", accept = "unix:/run/b.sock", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "c", accept = "127.0.0.1:8443", connect = "unix:/run/a.sock", cert = "c.pem"},
])",
       ""},
  });
}

// ---- client mode: server_name ---------------------------------------------------------------

TEST_CASE("client mode: server_name defaults to the one host of connect") {
  const ferry::ServiceConfig out = service_of(client_with(
      "connect = [\"mail.example.com:465\", \"mail.example.com:587\"]\nbalance = \"failover\"\n"));
  CHECK(out.tls.server_name == "mail.example.com");
  CHECK(out.connect.backends.size() == 2);
  CHECK(service_of(client_with("connect = \"[2001:db8::1]:465\"\n")).tls.server_name ==
        "2001:db8::1");
  // Named: any upstreams.
  const ferry::ServiceConfig named =
      service_of(client_with(R"(connect = ["10.0.0.1:465", "10.0.0.2:465", "unix:/run/tls.sock"]
server_name = "mail.example.com"
)"));
  CHECK(named.tls.server_name == "mail.example.com");
  CHECK(named.connect.backends.size() == 3);
}

TEST_CASE("client mode: server_name is required when the upstreams' hosts differ or one is unix:") {
  check_table({
      {client_with("connect = [\"10.0.0.1:465\", \"10.0.0.2:465\"]\n"),
       "t.toml:5:11: service[0].server_name: missing: the upstreams have different hosts; name "
       "the one to verify\n"},
      {client_with("connect = \"unix:/run/tls.sock\"\n"),
       "t.toml:5:11: service[0].server_name: missing: a unix: upstream has no host name to "
       "verify\n"},
      {client_with("connect = [\"mail.example.com:465\", \"unix:/run/tls.sock\"]\n"),
       "t.toml:5:11: service[0].server_name: missing: a unix: upstream has no host name to "
       "verify\n"},
      // Reported once, however many upstreams differ.
      {client_with("connect = [\"a.example:465\", \"b.example:465\", \"c.example:465\"]\n"),
       "t.toml:5:11: service[0].server_name: missing: the upstreams have different hosts; name "
       "the one to verify\n"},
  });
}

// ---- [global] max_open_files ------------------------------------------------------------------

TEST_CASE("global: max_open_files") {
  const std::string web = R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "web.crt"
)";
  const auto result = load_config_string("[global]\nmax_open_files = 65536\n" + web, "t.toml");
  REQUIRE(result.config);
  CHECK(result.config->max_open_files == 65536);
  CHECK(result.config->max_open_files_pos.line == 2);
  CHECK(result.config->max_open_files_pos.column == 18);
  const auto unset = load_config_string(web, "t.toml");
  REQUIRE(unset.config);
  CHECK(unset.config->max_open_files == 0);
  check_table({
      {"[global]\nmax_open_files = 64\n" + web, ""},
      {"[global]\nmax_open_files = 16777216\n" + web, ""},
      {"[global]\nmax_open_files = 63\n" + web,
       "t.toml:2:18: global.max_open_files: must be between 64 and 16777216\n"},
      {"[global]\nmax_open_files = 0\n" + web,
       "t.toml:2:18: global.max_open_files: must be between 64 and 16777216\n"},
      {"[global]\nmax_open_files = 16777217\n" + web,
       "t.toml:2:18: global.max_open_files: must be between 64 and 16777216\n"},
      {"[global]\nmax_open_files = \"65536\"\n" + web,
       "t.toml:2:18: global.max_open_files: expected an integer, got string\n"},
  });
}

// ---- the annotated example --------------------------------------------------------------------

TEST_CASE("config/ferry.example.toml loads without errors or warnings") {
  const std::filesystem::path example =
      std::filesystem::path(__FILE__).parent_path() / "../../config/ferry.example.toml";
  REQUIRE(std::filesystem::exists(example));
  const ferry::LoadResult result = ferry::load_config_file(example.string());
  std::string errors;
  for (const ferry::ConfigError& e : result.errors) errors += e.str() + "\n";
  CHECK(errors == "");
  CHECK(result.warnings.empty());
  REQUIRE(result.config);
  CHECK_FALSE(result.config->services.empty());
}
