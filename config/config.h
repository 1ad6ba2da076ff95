#pragma once
// ferry's configuration as plain structs: no toml++ types leak past config/loader.cpp.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/cidr.h"

namespace ferry {

// Where a value came from, so later stages (certificate loading, binding) can report errors as
// FILE:LINE:COLUMN like the loader does.
struct SourcePos {
  std::string file;
  int line = 0;
  int column = 0;
};

// One reported problem: `file:line:column: key: message`.
struct ConfigError {
  SourcePos pos;
  std::string key;  // dotted path, e.g. "service[0].handshake_timeout" or "metrics.listen"
  std::string message;

  std::string str() const;  // "file:line:column: key: message"
};

enum class LogLevel { error, warn, info, debug };

enum class LogFormat { text, json };

enum class ServiceMode { server, client };

// A "host:port" or "[v6addr]:port" as written; resolution happens when the runtime is built.
struct HostPort {
  std::string host;  // without brackets: "127.0.0.1", "::1", "localhost"
  uint16_t port = 0;

  std::string str() const;  // back to the written form, brackets restored for IPv6
};

// A backend (or client-mode upstream) as written: "host:port", "[v6]:port" or "unix:/path".
struct Endpoint {
  HostPort tcp;           // when unix_path is empty
  std::string unix_path;  // absolute path of a Unix stream socket

  bool is_unix() const { return !unix_path.empty(); }
  std::string str() const;  // as written (the metrics' backend label)
};

enum class Balance { round_robin, failover, least_connections };
enum class ProxyProtocol { none, v1, v2 };

// The backends one connection may go to: a service's `connect`, or a route's.
struct BackendGroupConfig {
  std::vector<Endpoint> backends;
  std::vector<SourcePos> positions;  // of each backend's string
  Balance balance = Balance::round_robin;
  ProxyProtocol proxy_protocol = ProxyProtocol::none;
};

// [[service.route]]: after the handshake, a server name picks the backends.
struct RouteConfig {
  std::string sni;  // lower-case; exact, or "*.example.com" (exactly one more label)
  BackendGroupConfig group;
  SourcePos pos;
};

enum class VerifyClient { none, optional, required };

// One more certificate of a server-mode service, chosen by SNI ([[service.certificates]]).
struct CertificateConfig {
  std::string cert_file;
  std::string key_file;  // defaults to cert_file
  SourcePos cert_pos;
  SourcePos key_pos;
};

// TLS policy of a service. Empty strings / zero mean "ferry's default". Keys that apply to one
// mode only are rejected by the loader in the other.
struct TlsPolicy {
  int min_version = 0;       // TLS1_2_VERSION / TLS1_3_VERSION (0x0303 / 0x0304); 0 = 1.2
  int max_version = 0;       // 0 = 1.3
  std::string ciphers;       // TLS 1.2 list, OpenSSL syntax
  std::string ciphersuites;  // TLS 1.3 list
  std::string groups;
  std::vector<std::string> alpn;  // server: preference order; client: offered
  // Server mode.
  std::vector<CertificateConfig> certificates;      // besides cert/key, chosen by SNI
  std::string client_ca;                            // request and verify client certificates
  VerifyClient verify_client = VerifyClient::none;  // required when client_ca is set
  std::string crl;
  std::vector<std::string> allow_subjects;  // RFC 2253/4514 subjects
  std::vector<std::string> allow_sans;      // DNS, URI or IP SANs
  bool session_tickets = true;
  std::string ticket_key_file;
  unsigned record_padding = 0;  // TLS 1.3 block padding, 0 = off
  // Client mode.
  std::string server_name;  // SNI and the name verified; default: the host part of connect
  std::string ca;           // file or directory; empty: the system trust store
  bool verify = true;

  SourcePos min_version_pos, max_version_pos, ciphers_pos, ciphersuites_pos, groups_pos, alpn_pos,
      client_ca_pos, verify_client_pos, crl_pos, allow_subjects_pos, allow_sans_pos,
      ticket_key_file_pos, record_padding_pos, server_name_pos, ca_pos, verify_pos;
};

struct ServiceConfig {
  size_t index = 0;  // position among the file's [[service]] tables; keys read "service[index]."
  std::string name;
  ServiceMode mode = ServiceMode::server;
  HostPort accept;             // unused when accept_systemd or accept_unix is set
  std::string accept_systemd;  // "systemd:NAME": the inherited socket named NAME
  std::string accept_unix;     // "unix:/path": the socket's path
  int unix_mode = -1;          // permission bits for accept_unix; -1: as the umask leaves them
  std::string unix_owner;      // chown the socket (empty: leave)
  std::string unix_group;
  int backlog = 1024;  // listen() backlog
  // Backends. May be empty in server mode when routes exist (unmatched names are refused).
  BackendGroupConfig connect;
  std::vector<RouteConfig> routes;
  unsigned max_fails = 3;  // consecutive failed connects that mark a backend down...
  std::chrono::milliseconds fail_timeout{std::chrono::seconds(10)};  // ...for this long
  bool accept_proxy = false;            // a PROXY v1/v2 header precedes the TLS handshake
  std::vector<Cidr> accept_proxy_from;  // peers allowed to send one; empty: any
  unsigned max_connections = 0;         // 0: unlimited
  std::vector<Cidr> allow;              // empty: everyone not denied
  std::vector<Cidr> deny;
  std::chrono::milliseconds tcp_keepalive{0};  // 0: off
  std::string cert_file;
  std::string key_file;  // defaults to cert_file when absent
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(5)};
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  TlsPolicy tls;

  // Positions of values that are checked after loading (files, binding).
  SourcePos pos;  // the [[service]] table header
  SourcePos accept_pos;
  SourcePos connect_pos;
  SourcePos cert_pos;
  SourcePos key_pos;  // == cert_pos when key is absent
};

struct MetricsConfig {
  HostPort listen;
  SourcePos listen_pos;
};

struct Config {
  std::string path;      // the file this came from
  unsigned workers = 0;  // 0 = one per CPU (resolve with effective_workers())
  LogLevel log_level = LogLevel::info;
  LogFormat log_format = LogFormat::text;
  bool access_log = true;  // one line per finished connection, at info
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(30)};  // drain on SIGTERM
  bool watch_files = true;      // reload when a cert/key file changes
  uint64_t max_open_files = 0;  // RLIMIT_NOFILE to set at start; 0: keep the inherited one
  SourcePos max_open_files_pos;
  std::string user;   // drop to this user after binding (empty: stay)
  std::string group;  // and this group (empty: the user's primary group)
  SourcePos user_pos;
  SourcePos group_pos;
  std::optional<MetricsConfig> metrics;  // absent: no endpoint
  std::vector<ServiceConfig> services;

  unsigned effective_workers() const;
};

struct LoadResult {
  std::optional<Config> config;  // set only when errors is empty
  // When there are errors but the TOML itself parsed: what could be read (fields with errors
  // keep their defaults), so later checks such as loading certificates can still report theirs.
  std::optional<Config> partial;
  std::vector<ConfigError> errors;  // every error found, in file order
  std::vector<ConfigError> warnings;
};

// Parse and validate a TOML config. Never throws; all problems land in `errors`.
LoadResult load_config_file(const std::string& path);
LoadResult load_config_string(std::string_view toml_text, const std::string& path);

// "250ms", "10s", "5m", "1h", and sums like "1m30s". Positive, at most 24h.
// On failure returns nullopt and, if `why` is given, a short reason.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text,
                                                        std::string* why = nullptr);

// "host:port" or "[v6]:port", port 1..65535. Host must be non-empty.
std::optional<HostPort> parse_host_port(std::string_view text, std::string* why = nullptr);

// ASCII lower case (DNS names, hosts): locale-independent.
std::string ascii_lower(std::string_view text);

// parse_host_port, or "unix:/absolute/path" (at most 107 bytes: sockaddr_un's limit).
std::optional<Endpoint> parse_endpoint(std::string_view text, std::string* why = nullptr);

const char* to_string(LogLevel level);
std::optional<LogLevel> parse_log_level(std::string_view text);

}  // namespace ferry
