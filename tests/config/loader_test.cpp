// Loader tests are tables: a TOML snippet in, the exact error lines out.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <thread>

#include <unistd.h>

#include "config/config.h"

using namespace std::chrono_literals;
using ferry::load_config_string;

namespace {

struct Case {
  std::string toml;
  std::string errors;  // every ConfigError::str(), one per line; "" for a valid config
};

// `snippet` followed by a valid [[service]], for tests about other parts of the file.
std::string with_web(const char* snippet) {
  return std::string(snippet) + R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "web.crt"
)";
}

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

// A client-mode [[service]] on lines 1-5, then `extra` from line 6.
std::string client_with(const char* extra) {
  return std::string(R"([[service]]
name = "out"
mode = "client"
accept = "127.0.0.1:2525"
connect = "mail.example.com:465"
)") + extra;
}

// A valid [[service]] on lines 1-5, then `extra` from line 6.
std::string web_with(const char* extra) {
  return with_web("") + extra;
}

}  // namespace

TEST_CASE("loader: unknown keys are errors at the key") {
  check_table({
      {with_web(R"(servcie = 1
)"),
       "t.toml:1:1: servcie: unknown key\n"},
      {R"([servcie]
name = "web"
)",
       "t.toml:1:1: service: at least one [[service]] is required\n"
       "t.toml:1:2: servcie: unknown key\n"},
      {R"([global]
wokers = 2
[metrics]
listen = "127.0.0.1:9100"
path = "/m"
[[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "web.crt"
  certificate = "web.crt"
tls.verify = true
)",
       "t.toml:2:1: global.wokers: unknown key\n"
       "t.toml:5:1: metrics.path: unknown key\n"
       "t.toml:11:3: service[0].certificate: unknown key\n"
       "t.toml:12:1: service[0].tls: unknown key\n"},
  });
}

TEST_CASE("loader: values of the wrong type") {
  check_table({
      {R"([global]
workers = "2"
log_level = 3
[metrics]
listen = 9100
[[service]]
name = 1
accept = ["0.0.0.0:8443"]
connect = "127.0.0.1:8080"
cert = true
key = 1.5
mode = {}
)",
       "t.toml:2:11: global.workers: expected an integer, got string\n"
       "t.toml:3:13: global.log_level: expected a string, got integer\n"
       "t.toml:5:10: metrics.listen: expected a string, got integer\n"
       "t.toml:7:8: service[0].name: expected a string, got integer\n"
       "t.toml:8:10: service[0].accept: expected a string, got array\n"
       "t.toml:10:8: service[0].cert: expected a string, got boolean\n"
       "t.toml:11:7: service[0].key: expected a string, got float\n"
       "t.toml:12:8: service[0].mode: expected a string, got table\n"},
      {with_web(R"(global = 1
metrics = "127.0.0.1:9100"
)"),
       "t.toml:1:10: global: expected a table, got integer\n"
       "t.toml:2:11: metrics: expected a table, got string\n"},
      {R"(service = ["web", 1])",
       "t.toml:1:12: service[0]: expected a table, got string\n"
       "t.toml:1:19: service[1]: expected a table, got integer\n"},
      {with_web(R"([global]
access_log = "yes"
watch_files = 1
user = 0
group = false
log_format = 1
)"),
       "t.toml:2:14: global.access_log: expected a boolean, got string\n"
       "t.toml:3:15: global.watch_files: expected a boolean, got integer\n"
       "t.toml:4:8: global.user: expected a string, got integer\n"
       "t.toml:5:9: global.group: expected a string, got boolean\n"
       "t.toml:6:14: global.log_format: expected a string, got integer\n"},
  });
}

TEST_CASE("loader: durations must be valid and be strings") {
  check_table({
      {web_with(R"(handshake_timeout = "10x"
connect_timeout = "1.5s"
idle_timeout = 300
)"),
       "t.toml:6:21: service[0].handshake_timeout: bad duration \"10x\": unknown unit \"x\" "
       "(use ms, s, m, h)\n"
       "t.toml:7:19: service[0].connect_timeout: bad duration \"1.5s\": fractions are not "
       "supported (use a smaller unit, e.g. \"1500ms\")\n"
       "t.toml:8:16: service[0].idle_timeout: expected a duration string such as \"10s\", got "
       "integer\n"},
      {web_with(R"(handshake_timeout = ""
connect_timeout = "10"
idle_timeout = "-1s"
)"),
       "t.toml:6:21: service[0].handshake_timeout: bad duration \"\": empty (use e.g. \"10s\")\n"
       "t.toml:7:19: service[0].connect_timeout: bad duration \"10\": missing unit after \"10\" "
       "(use ms, s, m, h)\n"
       "t.toml:8:16: service[0].idle_timeout: bad duration \"-1s\": must be positive\n"},
      {web_with(R"(idle_timeout = "25h"
)"),
       "t.toml:6:16: service[0].idle_timeout: bad duration \"25h\": must be at most 24h\n"},
      {with_web(R"([global]
shutdown_timeout = "30"
)"),
       "t.toml:2:20: global.shutdown_timeout: bad duration \"30\": missing unit after \"30\" "
       "(use ms, s, m, h)\n"},
      {with_web(R"([global]
shutdown_timeout = 30
)"),
       "t.toml:2:20: global.shutdown_timeout: expected a duration string such as \"10s\", got "
       "integer\n"},
  });
}

TEST_CASE("loader: addresses must be host:port or [v6addr]:port") {
  check_table({
      {R"([metrics]
listen = "9100"
[[service]]
name = "web"
accept = "::1:8443"
connect = "localhost"
cert = "web.crt"
)",
       "t.toml:2:10: metrics.listen: bad address \"9100\": missing port (use host:port or "
       "[v6addr]:port)\n"
       "t.toml:5:10: service[0].accept: bad address \"::1:8443\": IPv6 addresses need brackets, "
       "e.g. [::1]:443\n"
       "t.toml:6:11: service[0].connect: bad address \"localhost\": missing port (use host:port "
       "or [v6addr]:port)\n"},
      {R"([[service]]
name = "web"
accept = "0.0.0.0:0"
connect = "127.0.0.1:http"
cert = "web.crt"
)",
       "t.toml:3:10: service[0].accept: bad address \"0.0.0.0:0\": port must be between 1 and "
       "65535\n"
       "t.toml:4:11: service[0].connect: bad address \"127.0.0.1:http\": bad port \"http\"\n"},
  });
}

TEST_CASE("loader: service names must be valid and unique") {
  check_table({
      {R"(service = [
  {name = "Web", accept = "0.0.0.0:8443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "", accept = "0.0.0.0:8444", connect = "127.0.0.1:8080", cert = "c.pem"},
])",
       "t.toml:2:11: service[0].name: must match [a-z0-9_-]+\n"
       "t.toml:3:11: service[1].name: must match [a-z0-9_-]+\n"},
      {R"([[service]]
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
name = "web"
cert = "web.crt"
[[service]]
name = "api"
accept = "0.0.0.0:8444"
connect = "127.0.0.1:8080"
cert = "web.crt"
[[service]]
name = "web"
accept = "0.0.0.0:8445"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:12:8: service[2].name: duplicate service name \"web\" (first at line 4)\n"},
  });
}

TEST_CASE("loader: accept addresses must be unique") {
  check_table({
      {R"([[service]]
name = "api"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "web.crt"
[[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8081"
cert = "web.crt"
)",
       "t.toml:8:10: service[1].accept: duplicate accept address 0.0.0.0:8443 (also used by "
       "service \"api\")\n"},
      // Compared after normalising: IPv6 in canonical form, host names in lower case.
      {R"(service = [
  {name = "v6", accept = "[::1]:443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "v6-long", accept = "[0:0:0:0:0:0:0:1]:443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "upper", accept = "LOCALHOST:443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "lower", accept = "localhost:443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "other-port", accept = "[::1]:444", connect = "127.0.0.1:8080", cert = "c.pem"},
])",
       "t.toml:3:31: service[1].accept: duplicate accept address [0:0:0:0:0:0:0:1]:443 (also "
       "used by service \"v6\")\n"
       "t.toml:5:29: service[3].accept: duplicate accept address localhost:443 (also used by "
       "service \"upper\")\n"},
      // A service without a valid name is named by its index.
      {R"(service = [
  {name = "BAD", accept = "[::1]:443", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "web", accept = "[::1]:443", connect = "127.0.0.1:8080", cert = "c.pem"},
])",
       "t.toml:2:11: service[0].name: must match [a-z0-9_-]+\n"
       "t.toml:3:27: service[1].accept: duplicate accept address [::1]:443 (also used by "
       "service[0])\n"},
      // Socket activation: names are compared as written.
      {R"(service = [
  {name = "web", accept = "systemd:web", connect = "127.0.0.1:8080", cert = "c.pem"},
  {name = "api", accept = "systemd:api", connect = "127.0.0.1:8081", cert = "c.pem"},
  {name = "web2", accept = "systemd:web", connect = "127.0.0.1:8082", cert = "c.pem"},
])",
       "t.toml:4:28: service[2].accept: duplicate accept address systemd:web\n"},
  });
}
TEST_CASE("loader: required keys are reported at the [[service]] header") {
  check_table({
      {R"(
[[service]]
mode = "server"
)",
       "t.toml:2:1: service[0].name: missing required key\n"
       "t.toml:2:1: service[0].accept: missing required key\n"
       "t.toml:2:1: service[0].connect: missing required key\n"
       "t.toml:2:1: service[0].cert: missing required key\n"},
      {web_with(R"([[service]]
name = "api"
accept = "0.0.0.0:8444"
key = "api.key"
)"),
       "t.toml:6:1: service[1].connect: missing required key\n"
       "t.toml:6:1: service[1].cert: missing required key\n"},
      {R"(service = [{name = "web", accept = "0.0.0.0:8443", connect = "127.0.0.1:8080"}])",
       "t.toml:1:12: service[0].cert: missing required key\n"},
      {R"([global]
workers = 2
)",
       "t.toml:1:1: service: at least one [[service]] is required\n"},
      {R"(service = [])", "t.toml:1:11: service: at least one [[service]] is required\n"},
  });
}

TEST_CASE("loader: client mode loads; a bad mode is an error") {
  const auto result = load_config_string(R"([[service]]
name = "smtp-out"
mode = "client"
accept = "127.0.0.1:2525"
connect = "mail.example.com:465"
ca = "upstream-ca.pem"
alpn = ["smtp"]
)",
                                         "/etc/ferry/t.toml");
  CHECK(result.errors.empty());
  REQUIRE(result.config);
  const ferry::ServiceConfig& out = result.config->services.at(0);
  CHECK(out.mode == ferry::ServiceMode::client);
  CHECK(out.cert_file.empty());
  CHECK(out.tls.server_name == "mail.example.com");  // the host part of connect
  CHECK(out.tls.ca == "/etc/ferry/upstream-ca.pem");
  CHECK(out.tls.verify);
  CHECK(out.tls.alpn == std::vector<std::string>{"smtp"});
  check_table({
      {R"([[service]]
name = "web"
mode = "proxy"
accept = "127.0.0.1:8080"
connect = "example.com:443"
cert = "web.crt"
)",
       "t.toml:3:8: service[0].mode: bad mode \"proxy\" (use server or client)\n"},
  });
}

TEST_CASE("loader: TLS versions and cipher lists") {
  check_table({
      {web_with(R"(min_version = "1.1"
max_version = 1.3
)"),
       "t.toml:6:15: service[0].min_version: bad TLS version \"1.1\" (use \"1.2\" or \"1.3\")\n"
       "t.toml:7:15: service[0].max_version: expected a string, got float\n"},
      {web_with(R"(min_version = "1.3"
max_version = "1.2"
)"),
       "t.toml:6:15: service[0].min_version: is above max_version\n"},
      {web_with(R"(ciphers = ""
ciphersuites = ""
groups = ""
)"),
       "t.toml:6:11: service[0].ciphers: must not be empty\n"
       "t.toml:7:16: service[0].ciphersuites: must not be empty\n"
       "t.toml:8:10: service[0].groups: must not be empty\n"},
      {web_with(R"(min_version = "1.3"
max_version = "1.3"
ciphers = "ECDHE+AESGCM"
ciphersuites = "TLS_AES_128_GCM_SHA256"
groups = "X25519:P-256"
)"),
       ""},
  });
}

TEST_CASE("loader: alpn is a list of non-empty strings of at most 255 bytes") {
  const std::string long_name(256, 'a');
  check_table({
      {web_with(R"(alpn = "h2"
)"),
       "t.toml:6:8: service[0].alpn: expected an array of strings, got string\n"},
      {web_with(R"(alpn = ["h2", "", 2]
)"),
       "t.toml:6:15: service[0].alpn[1]: must not be empty\n"
       "t.toml:6:19: service[0].alpn[2]: expected a string, got integer\n"},
      {web_with(("alpn = [\"h2\", \"" + long_name + "\"]\n").c_str()),
       "t.toml:6:8: service[0].alpn[1]: longer than 255 bytes\n"},
      {web_with(R"(alpn = ["h2", "http/1.1"]
)"),
       ""},
  });
}

TEST_CASE("loader: keys of one mode are errors in the other") {
  check_table({
      {web_with(R"(server_name = "example.com"
ca = "ca.pem"
verify = false
)"),
       "t.toml:6:15: service[0].server_name: only for mode = \"client\"\n"
       "t.toml:7:6: service[0].ca: only for mode = \"client\"\n"
       "t.toml:8:10: service[0].verify: only for mode = \"client\"\n"},
      {client_with(R"(client_ca = "clients.pem"
verify_client = "required"
crl = "c.crl"
allow_subjects = ["CN=a"]
allow_sans = ["a"]
session_tickets = false
ticket_key_file = "t.key"
[[service.certificates]]
cert = "api.crt"
)"),
       "t.toml:6:13: service[0].client_ca: only for mode = \"server\"\n"
       "t.toml:7:17: service[0].verify_client: only for mode = \"server\"\n"
       "t.toml:8:7: service[0].crl: only for mode = \"server\"\n"
       "t.toml:9:18: service[0].allow_subjects: only for mode = \"server\"\n"
       "t.toml:10:14: service[0].allow_sans: only for mode = \"server\"\n"
       "t.toml:11:19: service[0].session_tickets: only for mode = \"server\"\n"
       "t.toml:12:19: service[0].ticket_key_file: only for mode = \"server\"\n"
       "t.toml:13:1: service[0].certificates: only for mode = \"server\"\n"},
  });
}

TEST_CASE("loader: client verification keys need client_ca") {
  check_table({
      {web_with(R"(verify_client = "optional"
)"),
       "t.toml:6:17: service[0].verify_client: needs client_ca (the CA that signs client "
       "certificates)\n"},
      {web_with(R"(verify_client = "sometimes"
)"),
       "t.toml:6:17: service[0].verify_client: bad value \"sometimes\" (use none, optional or "
       "required)\n"},
      {web_with(R"(crl = "c.crl"
allow_subjects = ["CN=app1"]
allow_sans = ["app1.internal"]
)"),
       "t.toml:6:7: service[0].crl: needs client_ca (and verify_client other than none)\n"
       "t.toml:7:18: service[0].allow_subjects: needs client_ca (and verify_client other than "
       "none)\n"
       "t.toml:8:14: service[0].allow_sans: needs client_ca (and verify_client other than none)\n"},
      {web_with(R"(client_ca = "clients.pem"
verify_client = "none"
crl = "c.crl"
)"),
       "t.toml:8:7: service[0].crl: needs client_ca (and verify_client other than none)\n"},
      {web_with(R"(client_ca = "clients.pem"
verify_client = "optional"
crl = "c.crl"
allow_subjects = ["CN=app1,O=Acme"]
allow_sans = ["spiffe://prod/app1"]
)"),
       ""},
  });
}

TEST_CASE("loader: record_padding and ticket keys") {
  check_table({
      {web_with(R"(record_padding = 16385
)"),
       "t.toml:6:18: service[0].record_padding: must be between 0 and 16384 (0 = off)\n"},
      {web_with(R"(record_padding = -1
)"),
       "t.toml:6:18: service[0].record_padding: must be between 0 and 16384 (0 = off)\n"},
      {web_with(R"(record_padding = "64"
)"),
       "t.toml:6:18: service[0].record_padding: expected an integer, got string\n"},
      {web_with(R"(session_tickets = false
ticket_key_file = "tickets.key"
)"),
       "t.toml:7:19: service[0].ticket_key_file: set, but session_tickets = false\n"},
      {web_with(R"(record_padding = 16384
ticket_key_file = "tickets.key"
)"),
       ""},
  });
}

TEST_CASE("loader: [[service.certificates]] entries") {
  check_table({
      {web_with(R"([[service.certificates]]
key = "api.key"
[[service.certificates]]
cert = "www.crt"
chain = "x.pem"
)"),
       "t.toml:6:1: service[0].certificates[0].cert: missing required key\n"
       "t.toml:10:1: service[0].certificates[1].chain: unknown key\n"},
      {web_with(R"(certificates = "api.crt"
)"),
       "t.toml:6:16: service[0].certificates: expected an array of tables "
       "([[service.certificates]]), got string\n"},
  });
  const auto result = load_config_string(web_with(R"([[service.certificates]]
cert = "api.crt"
[[service.certificates]]
cert = "www.crt"
key = "www.key"
)"),
                                         "/etc/ferry/t.toml");
  REQUIRE(result.config);
  const auto& certs = result.config->services.at(0).tls.certificates;
  REQUIRE(certs.size() == 2);
  CHECK(certs[0].cert_file == "/etc/ferry/api.crt");
  CHECK(certs[0].key_file == "/etc/ferry/api.crt");
  CHECK(certs[0].cert_pos.line == 7);
  CHECK(certs[1].key_file == "/etc/ferry/www.key");
  CHECK(certs[1].key_pos.line == 10);
}

TEST_CASE("loader: log_level must be a known level") {
  check_table({
      {with_web(R"([global]
log_level = "verbose"
)"),
       "t.toml:2:13: global.log_level: bad log level \"verbose\" (use error, warn, info or "
       "debug)\n"},
      {with_web(R"([global]
log_level = "INFO"
)"),
       "t.toml:2:13: global.log_level: bad log level \"INFO\" (use error, warn, info or "
       "debug)\n"},
  });
}

TEST_CASE("loader: workers must be between 0 and 1024") {
  check_table({
      {with_web(R"([global]
workers = -1
)"),
       "t.toml:2:11: global.workers: must be between 0 and 1024 (0 = one per CPU)\n"},
      {with_web(R"([global]
workers = 9223372036854775807
)"),
       "t.toml:2:11: global.workers: must be between 0 and 1024 (0 = one per CPU)\n"},
      {with_web(R"([global]
workers = 1.5
)"),
       "t.toml:2:11: global.workers: expected an integer, got float\n"},
  });
}

TEST_CASE("loader: [metrics] needs listen") {
  check_table({
      {web_with(R"(
[metrics]
)"),
       "t.toml:7:1: metrics.listen: missing required key\n"},
  });
}

TEST_CASE("loader: a TOML syntax error is reported alone with its position") {
  check_table({
      {R"([global]
workers = 
log_level = "loud"
)",
       "t.toml:2:11: syntax: Error while parsing key-value pair: expected value, saw '\\n'\n"},
      {R"([global]
workers = 1
workers = 2
)",
       "t.toml:3:11: syntax: Error while parsing key-value pair: cannot redefine existing "
       "integer 'workers'\n"},
      {R"([[service]]
name = "web
)",
       "t.toml:2:12: syntax: Error while parsing string: unescaped control characters other "
       "than TAB (U+0009) are explicitly prohibited\n"},
  });
}

TEST_CASE("loader: every error is reported, in file order") {
  check_table({
      {R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1"
cert = "web.crt"
idle_timeout = "5 m"
[global]
workers = -4
log_level = "loud"
colour = true
)",
       "t.toml:4:11: service[0].connect: bad address \"127.0.0.1\": missing port (use host:port "
       "or [v6addr]:port)\n"
       "t.toml:6:16: service[0].idle_timeout: bad duration \"5 m\": unexpected character ' '\n"
       "t.toml:8:11: global.workers: must be between 0 and 1024 (0 = one per CPU)\n"
       "t.toml:9:13: global.log_level: bad log level \"loud\" (use error, warn, info or debug)\n"
       "t.toml:10:1: global.colour: unknown key\n"},
  });
}

TEST_CASE("loader: service written as a table instead of [[service]]") {
  check_table({
      {R"([service]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:1:1: service: expected an array of tables ([[service]]), got table\n"},
  });
}

TEST_CASE("loader: a full config produces the structs") {
  const auto result = load_config_string(R"([global]
workers = 2
log_level = "debug"

[metrics]
listen = "127.0.0.1:9100"

[[service]]
name = "web"
mode = "server"
accept = "[::]:8443"
connect = "127.0.0.1:8080"
cert = "/etc/ferry/web.crt"
key = "/etc/ferry/web.key"
handshake_timeout = "250ms"
connect_timeout = "1m30s"
idle_timeout = "1h"
)",
                                         "/etc/ferry/ferry.toml");
  REQUIRE(result.errors.empty());
  REQUIRE(result.config);
  const ferry::Config& config = *result.config;
  CHECK(config.path == "/etc/ferry/ferry.toml");
  CHECK(config.workers == 2);
  CHECK(config.effective_workers() == 2);
  CHECK(config.log_level == ferry::LogLevel::debug);
  REQUIRE(config.metrics);
  CHECK(config.metrics->listen.str() == "127.0.0.1:9100");
  CHECK(config.metrics->listen_pos.file == "/etc/ferry/ferry.toml");
  CHECK(config.metrics->listen_pos.line == 6);
  CHECK(config.metrics->listen_pos.column == 10);
  REQUIRE(config.services.size() == 1);
  const ferry::ServiceConfig& web = config.services[0];
  CHECK(web.name == "web");
  CHECK(web.mode == ferry::ServiceMode::server);
  CHECK(web.accept.host == "::");
  CHECK(web.accept.port == 8443);
  CHECK(web.connect.backends.at(0).str() == "127.0.0.1:8080");
  CHECK(web.cert_file == "/etc/ferry/web.crt");
  CHECK(web.key_file == "/etc/ferry/web.key");
  CHECK(web.handshake_timeout == 250ms);
  CHECK(web.connect_timeout == 90s);
  CHECK(web.idle_timeout == 1h);
  CHECK(web.pos.line == 8);
  CHECK(web.pos.column == 1);
  CHECK(web.accept_pos.line == 11);
  CHECK(web.connect_pos.line == 12);
  CHECK(web.cert_pos.line == 13);
  CHECK(web.key_pos.line == 14);
  CHECK(web.key_pos.column == 7);
  CHECK(web.key_pos.file == "/etc/ferry/ferry.toml");
  CHECK(result.warnings.empty());
}

TEST_CASE("loader: defaults apply to a minimal config") {
  const auto result = load_config_string(with_web(""), "ferry.toml");
  REQUIRE(result.config);
  const ferry::Config& config = *result.config;
  CHECK(config.workers == 0);
  CHECK(config.effective_workers() >= 1);
  CHECK(config.log_level == ferry::LogLevel::info);
  CHECK(config.log_format == ferry::LogFormat::text);
  CHECK(config.access_log);
  CHECK(config.shutdown_timeout == 30s);
  CHECK(config.watch_files);
  CHECK(config.user.empty());
  CHECK(config.group.empty());
  CHECK_FALSE(config.metrics);
  REQUIRE(config.services.size() == 1);
  const ferry::ServiceConfig& web = config.services[0];
  CHECK(web.mode == ferry::ServiceMode::server);
  CHECK(web.handshake_timeout == 10s);
  CHECK(web.connect_timeout == 5s);
  CHECK(web.idle_timeout == 5min);
}

TEST_CASE("loader: key defaults to cert, with the cert's position") {
  const auto result = load_config_string(with_web(""), "/etc/ferry/ferry.toml");
  REQUIRE(result.config);
  const ferry::ServiceConfig& web = result.config->services.at(0);
  CHECK(web.key_file == "/etc/ferry/web.crt");
  CHECK(web.key_file == web.cert_file);
  CHECK(web.key_pos.file == "/etc/ferry/ferry.toml");
  CHECK(web.key_pos.line == 5);
  CHECK(web.key_pos.column == 8);
  CHECK(web.cert_pos.line == 5);
}

TEST_CASE("loader: relative cert and key paths are relative to the config file") {
  const char* toml = R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = "certs/web.crt"
key = "../keys/web.key"
[[service]]
name = "api"
accept = "0.0.0.0:8444"
connect = "127.0.0.1:8081"
cert = "api.pem"
)";
  const auto in_etc = load_config_string(toml, "/etc/ferry/ferry.toml");
  REQUIRE(in_etc.config);
  CHECK(in_etc.config->services[0].cert_file == "/etc/ferry/certs/web.crt");
  CHECK(in_etc.config->services[0].key_file == "/etc/ferry/../keys/web.key");
  CHECK(in_etc.config->services[1].cert_file == "/etc/ferry/api.pem");
  CHECK(in_etc.config->services[1].key_file == "/etc/ferry/api.pem");

  const auto in_cwd = load_config_string(toml, "ferry.toml");
  REQUIRE(in_cwd.config);
  CHECK(in_cwd.config->services[0].cert_file == "certs/web.crt");
  CHECK(in_cwd.config->services[1].key_file == "api.pem");
}

TEST_CASE("loader: empty cert or key paths are errors") {
  check_table({
      {R"([[service]]
name = "web"
accept = "0.0.0.0:8443"
connect = "127.0.0.1:8080"
cert = ""
key = ""
)",
       "t.toml:5:8: service[0].cert: must not be empty\n"
       "t.toml:6:7: service[0].key: must not be empty\n"},
  });
}

TEST_CASE("load_config_file reads the file and names it in errors") {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ferry_loader_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "ferry.toml").string();
  {
    std::ofstream out(path);
    out << web_with("idle_timeout = \"10x\"\n");
  }
  const auto bad = ferry::load_config_file(path);
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].str() == path +
                                   ":6:16: service[0].idle_timeout: bad duration \"10x\": unknown "
                                   "unit \"x\" (use ms, s, m, h)");
  {
    std::ofstream out(path);
    out << with_web("");
  }
  const auto good = ferry::load_config_file(path);
  REQUIRE(good.config);
  CHECK(good.config->services[0].cert_file == (dir / "web.crt").string());

  const auto directory = ferry::load_config_file(dir.string());
  REQUIRE(directory.errors.size() == 1);
  CHECK(directory.errors[0].str() == dir.string() + ": is a directory");
  std::filesystem::remove_all(dir);

  const auto missing = ferry::load_config_file(path);
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0].str() == path + ": cannot open: No such file or directory");
  CHECK_FALSE(missing.config);
}

TEST_CASE("ConfigError::str formats file:line:column: key: message") {
  ferry::ConfigError positioned;
  positioned.pos.file = "a.toml";
  positioned.pos.line = 3;
  positioned.pos.column = 7;
  positioned.key = "global.workers";
  positioned.message = "bad";
  ferry::ConfigError whole_file;
  whole_file.pos.file = "a.toml";
  whole_file.message = "cannot open: x";
  CHECK(positioned.str() == "a.toml:3:7: global.workers: bad");
  CHECK(whole_file.str() == "a.toml: cannot open: x");
}

TEST_CASE("Config::effective_workers resolves 0 to the CPU count") {
  ferry::Config config;
  CHECK(config.effective_workers() == std::max(1u, std::thread::hardware_concurrency()));
  config.workers = 3;
  CHECK(config.effective_workers() == 3);
}

TEST_CASE("log levels round-trip through their names") {
  for (auto level : {ferry::LogLevel::error, ferry::LogLevel::warn, ferry::LogLevel::info,
                     ferry::LogLevel::debug}) {
    CHECK(ferry::parse_log_level(ferry::to_string(level)) == level);
  }
  CHECK(std::string(ferry::to_string(ferry::LogLevel::warn)) == "warn");
  CHECK_FALSE(ferry::parse_log_level("warning"));
  CHECK_FALSE(ferry::parse_log_level(""));
}

TEST_CASE("loader: log_format must be text or json") {
  check_table({
      {with_web(R"([global]
log_format = "text"
)"),
       ""},
      {with_web(R"([global]
log_format = "json"
)"),
       ""},
      {with_web(R"([global]
log_format = "JSON"
)"),
       "t.toml:2:14: global.log_format: bad log format \"JSON\" (use text or json)\n"},
      {with_web(R"([global]
log_format = "logfmt"
)"),
       "t.toml:2:14: global.log_format: bad log format \"logfmt\" (use text or json)\n"},
  });
}

TEST_CASE("loader: user and group must not be empty") {
  check_table({
      {with_web(R"([global]
user = ""
group = ""
)"),
       "t.toml:2:8: global.user: must not be empty\n"
       "t.toml:3:9: global.group: must not be empty\n"},
      {with_web(R"([global]
user = "ferry"
group = "ferry"
)"),
       ""},
  });
}

TEST_CASE("loader: accept = \"systemd:NAME\" names an inherited socket") {
  check_table({
      {R"([[service]]
name = "web"
accept = "systemd:web"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       ""},
      {R"([[service]]
name = "web"
accept = "systemd:"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:3:10: service[0].accept: bad socket name \"systemd:\" (use systemd:NAME with the "
       "unit's FileDescriptorName=)\n"},
      {R"([[service]]
name = "web"
accept = "systemd:a:b"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
       "t.toml:3:10: service[0].accept: bad socket name \"systemd:a:b\" (use systemd:NAME with "
       "the unit's FileDescriptorName=)\n"},
  });
  const auto result = load_config_string(R"([[service]]
name = "web"
accept = "systemd:web"
connect = "127.0.0.1:8080"
cert = "web.crt"
)",
                                         "t.toml");
  REQUIRE(result.config);
  CHECK(result.config->services.at(0).accept_systemd == "web");
  CHECK(result.config->services.at(0).accept_pos.line == 3);
}

TEST_CASE("loader: the service keys of [global] parse into the config") {
  const auto result = load_config_string(with_web(R"([global]
log_format = "json"
access_log = false
shutdown_timeout = "1m30s"
watch_files = false
user = "ferry"
group = "nogroup"
)"),
                                         "t.toml");
  REQUIRE(result.config);
  const ferry::Config& config = *result.config;
  CHECK(config.log_format == ferry::LogFormat::json);
  CHECK_FALSE(config.access_log);
  CHECK(config.shutdown_timeout == 90s);
  CHECK_FALSE(config.watch_files);
  CHECK(config.user == "ferry");
  CHECK(config.group == "nogroup");
  CHECK(config.user_pos.line == 6);
  CHECK(config.group_pos.line == 7);
}
