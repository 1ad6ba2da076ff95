// TOML -> Config. Collects every problem with its position; never throws to the caller.
#include <arpa/inet.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>

#include "config/config.h"
#include "config/loader_internal.h"

namespace ferry {
namespace detail {
namespace {

constexpr int64_t kMaxWorkers = 1024;

}  // namespace

std::string_view type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string in_quotes(std::string_view text) {
  return "\"" + std::string(text) + "\"";
}

// The form used to compare accept addresses: lower-case host, IP addresses in canonical form.
namespace {

std::string normalised(const HostPort& address) {
  std::string host = ascii_lower(address.host);
  char buffer[INET6_ADDRSTRLEN] = {};
  in6_addr v6{};
  in_addr v4{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (inet_ntop(AF_INET6, &v6, buffer, sizeof buffer)) host = buffer;
  } else if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    if (inet_ntop(AF_INET, &v4, buffer, sizeof buffer)) host = buffer;
  }
  return HostPort{host, address.port}.str();
}

bool valid_service_name(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// One pass over a parsed document. Every check appends to errors_ and carries on.
}  // namespace

void Loader::check_keys(const toml::table& table, const std::string& prefix,
                        std::initializer_list<std::string_view> known) {
  for (auto&& [key, value] : table) {
    if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
      error(key.source(), prefix + std::string(key.str()), "unknown key");
    }
  }
}

const toml::table* Loader::table_at(const toml::node& node, const std::string& key) {
  const toml::table* table = node.as_table();
  if (!table) type_error(node, key, "a table");
  return table;
}

const std::string* Loader::string_at(const toml::table& table, std::string_view name,
                                     const std::string& key) {
  const toml::node* node = table.get(name);
  if (!node) return nullptr;
  if (const auto* value = node->as_string()) return &value->get();
  type_error(*node, key, "a string");
  return nullptr;
}

void Loader::duration_at(const toml::table& table, std::string_view name, const std::string& key,
                         std::chrono::milliseconds& out) {
  const toml::node* node = table.get(name);
  if (!node) return;
  const auto* value = node->as_string();
  if (!value) {
    type_error(*node, key, "a duration string such as \"10s\"");
    return;
  }
  std::string why;
  if (auto parsed = parse_duration(value->get(), &why)) {
    out = *parsed;
  } else {
    error(node->source(), key, "bad duration " + in_quotes(value->get()) + ": " + why);
  }
}

bool Loader::address_at(const toml::table& table, std::string_view name, const std::string& key,
                        HostPort& out, SourcePos& pos) {
  const std::string* text = string_at(table, name, key);
  if (!text) return false;
  const toml::node& node = *table.get(name);
  pos = pos_of(node.source());
  std::string why;
  auto parsed = parse_host_port(*text, &why);
  if (!parsed) {
    error(node.source(), key, "bad address " + in_quotes(*text) + ": " + why);
    return false;
  }
  out = std::move(*parsed);
  return true;
}

std::string Loader::resolve_path(const std::string& file) const {
  const std::filesystem::path p(file);
  const std::filesystem::path base = std::filesystem::path(path_).parent_path();
  if (p.is_absolute() || base.empty()) return file;
  return (base / p).string();
}

void Loader::load_global(const toml::node& node) {
  const toml::table* table = table_at(node, "global");
  if (!table) return;
  check_keys(*table, "global.",
             {"workers", "log_level", "log_format", "access_log", "shutdown_timeout", "watch_files",
              "user", "group", "max_open_files"});

  if (const toml::node* workers = table->get("workers")) {
    if (const auto* value = workers->as_integer()) {
      if (value->get() < 0 || value->get() > kMaxWorkers) {
        error(workers->source(), "global.workers",
              "must be between 0 and " + std::to_string(kMaxWorkers) + " (0 = one per CPU)");
      } else {
        config_.workers = static_cast<unsigned>(value->get());
      }
    } else {
      type_error(*workers, "global.workers", "an integer");
    }
  }

  if (const std::string* level = string_at(*table, "log_level", "global.log_level")) {
    if (auto parsed = parse_log_level(*level)) {
      config_.log_level = *parsed;
    } else {
      error(table->get("log_level")->source(), "global.log_level",
            "bad log level " + in_quotes(*level) + " (use error, warn, info or debug)");
    }
  }

  if (const std::string* format = string_at(*table, "log_format", "global.log_format")) {
    if (*format == "text") {
      config_.log_format = LogFormat::text;
    } else if (*format == "json") {
      config_.log_format = LogFormat::json;
    } else {
      error(table->get("log_format")->source(), "global.log_format",
            "bad log format " + in_quotes(*format) + " (use text or json)");
    }
  }
  int64_t files = 0;
  if (integer_at(*table, "max_open_files", "global.max_open_files", 64, 16'777'216, files)) {
    config_.max_open_files = static_cast<uint64_t>(files);
    config_.max_open_files_pos = pos_of(table->get("max_open_files")->source());
  }
  bool_at(*table, "access_log", "global.access_log", config_.access_log);
  bool_at(*table, "watch_files", "global.watch_files", config_.watch_files);
  duration_at(*table, "shutdown_timeout", "global.shutdown_timeout", config_.shutdown_timeout);
  for (auto [name, out, pos] : {std::tuple{"user", &config_.user, &config_.user_pos},
                                std::tuple{"group", &config_.group, &config_.group_pos}}) {
    if (const std::string* value = string_at(*table, name, std::string("global.") + name)) {
      *pos = pos_of(table->get(name)->source());
      if (value->empty()) {
        error(table->get(name)->source(), std::string("global.") + name, "must not be empty");
      }
      *out = *value;
    }
  }
}

void Loader::bool_at(const toml::table& table, std::string_view name, const std::string& key,
                     bool& out) {
  const toml::node* node = table.get(name);
  if (!node) return;
  if (const auto* value = node->as_boolean()) {
    out = value->get();
  } else {
    type_error(*node, key, "a boolean");
  }
}

void Loader::load_metrics(const toml::node& node) {
  const toml::table* table = table_at(node, "metrics");
  if (!table) return;
  check_keys(*table, "metrics.", {"listen"});
  if (!table->contains("listen")) {
    error(table->source(), "metrics.listen", "missing required key");
    return;
  }
  MetricsConfig metrics;
  if (address_at(*table, "listen", "metrics.listen", metrics.listen, metrics.listen_pos)) {
    config_.metrics = std::move(metrics);
  }
}

void Loader::load_services(const toml::node& node) {
  const toml::array* array = node.as_array();
  if (!array) {
    type_error(node, "service", "an array of tables ([[service]])");
    return;
  }
  for (size_t i = 0; i < array->size(); ++i) load_service(*array->get(i), i);
}

void Loader::load_service(const toml::node& node, size_t index) {
  const std::string prefix = "service[" + std::to_string(index) + "].";
  const toml::table* table = table_at(node, "service[" + std::to_string(index) + "]");
  if (!table) return;
  check_keys(*table, prefix,
             {"name",
              "mode",
              "accept",
              "connect",
              "cert",
              "key",
              "handshake_timeout",
              "connect_timeout",
              "idle_timeout",
              "min_version",
              "max_version",
              "ciphers",
              "ciphersuites",
              "groups",
              "alpn",
              "certificates",
              "client_ca",
              "verify_client",
              "crl",
              "allow_subjects",
              "allow_sans",
              "session_tickets",
              "ticket_key_file",
              "record_padding",
              "server_name",
              "ca",
              "verify",
              "balance",
              "max_fails",
              "fail_timeout",
              "proxy_protocol",
              "accept_proxy",
              "accept_proxy_from",
              "route",
              "max_connections",
              "allow",
              "deny",
              "tcp_keepalive",
              "backlog",
              "unix_mode",
              "unix_owner",
              "unix_group"});

  ServiceConfig service;
  service.index = index;
  service.pos = pos_of(table->source());
  auto require = [&](std::string_view name) {
    if (!table->contains(name)) {
      error(table->source(), prefix + std::string(name), "missing required key");
    }
  };

  require("name");
  if (const std::string* name = string_at(*table, "name", prefix + "name")) {
    const toml::node& name_node = *table->get("name");
    if (!valid_service_name(*name)) {
      error(name_node.source(), prefix + "name", "must match [a-z0-9_-]+");
    } else if (auto first = names_.find(*name); first != names_.end()) {
      error(name_node.source(), prefix + "name",
            "duplicate service name " + in_quotes(*name) + " (first at line " +
                std::to_string(first->second) + ")");
    } else {
      names_.emplace(*name, static_cast<int>(name_node.source().begin.line));
      service.name = *name;
    }
  }

  if (const std::string* mode = string_at(*table, "mode", prefix + "mode")) {
    if (*mode == "client") {
      service.mode = ServiceMode::client;
    } else if (*mode != "server") {
      error(table->get("mode")->source(), prefix + "mode",
            "bad mode " + in_quotes(*mode) + " (use server or client)");
    }
  }

  require("accept");
  const std::string* accept_text =
      table->get_as<std::string>("accept") ? &table->get_as<std::string>("accept")->get() : nullptr;
  if (accept_text && accept_text->starts_with("systemd:")) {
    // Socket activation: the socket comes from systemd, named by FileDescriptorName=.
    service.accept_pos = pos_of(table->get("accept")->source());
    service.accept_systemd = accept_text->substr(8);
    if (service.accept_systemd.empty() || service.accept_systemd.size() > 255 ||
        service.accept_systemd.find(':') != std::string::npos) {
      error(table->get("accept")->source(), prefix + "accept",
            "bad socket name " + in_quotes(*accept_text) +
                " (use systemd:NAME with the unit's FileDescriptorName=)");
    } else if (!accepts_.emplace(*accept_text, service.name).second) {
      error(table->get("accept")->source(), prefix + "accept",
            "duplicate accept address " + *accept_text);
    }
  } else if (accept_text && accept_text->starts_with("unix:")) {
    service.accept_pos = pos_of(table->get("accept")->source());
    std::string why;
    if (auto endpoint = parse_endpoint(*accept_text, &why)) {
      service.accept_unix = endpoint->unix_path;
      if (!accepts_.emplace(*accept_text, service.name).second) {
        error(table->get("accept")->source(), prefix + "accept",
              "duplicate accept address " + *accept_text);
      }
    } else {
      error(table->get("accept")->source(), prefix + "accept",
            "bad address " + in_quotes(*accept_text) + ": " + why);
    }
  } else if (address_at(*table, "accept", prefix + "accept", service.accept, service.accept_pos)) {
    const std::string user = service.name.empty() ? "service[" + std::to_string(index) + "]"
                                                  : "service " + in_quotes(service.name);
    const auto [it, inserted] = accepts_.emplace(normalised(service.accept), user);
    if (!inserted) {
      error(table->get("accept")->source(), prefix + "accept",
            "duplicate accept address " + service.accept.str() + " (also used by " + it->second +
                ")");
    }
  }

  load_service_network(*table, prefix, service);

  // A certificate is needed in server mode; in client mode it is the optional client
  // certificate (mTLS), and a key without a certificate makes no sense.
  if (service.mode == ServiceMode::server) require("cert");
  if (service.mode == ServiceMode::client && table->contains("key") && !table->contains("cert")) {
    error(table->get("key")->source(), prefix + "key", "needs cert as well");
  }
  if (const std::string* cert = string_at(*table, "cert", prefix + "cert")) {
    service.cert_pos = pos_of(table->get("cert")->source());
    if (cert->empty()) {
      error(table->get("cert")->source(), prefix + "cert", "must not be empty");
    }
    service.cert_file = resolve_path(*cert);
  }
  service.key_file = service.cert_file;
  service.key_pos = service.cert_pos;
  if (const std::string* key = string_at(*table, "key", prefix + "key")) {
    service.key_pos = pos_of(table->get("key")->source());
    if (key->empty()) error(table->get("key")->source(), prefix + "key", "must not be empty");
    service.key_file = resolve_path(*key);
  }

  duration_at(*table, "handshake_timeout", prefix + "handshake_timeout", service.handshake_timeout);
  duration_at(*table, "connect_timeout", prefix + "connect_timeout", service.connect_timeout);
  duration_at(*table, "idle_timeout", prefix + "idle_timeout", service.idle_timeout);
  load_service_tls(*table, prefix, service);

  // Kept even when something above failed: the config is only returned without errors.
  config_.services.push_back(std::move(service));
}

LoadResult Loader::run(std::string_view text) {
  LoadResult result;
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(path_));
  } catch (const toml::parse_error& e) {
    // toml++ stops at the first syntax error: report it alone.
    error(e.source(), "syntax", std::string(e.description()));
    result.errors = std::move(errors_);
    return result;
  }

  check_keys(root, "", {"global", "metrics", "service"});
  if (const toml::node* global = root.get("global")) load_global(*global);
  if (const toml::node* metrics = root.get("metrics")) load_metrics(*metrics);
  if (const toml::node* services = root.get("service")) {
    load_services(*services);
    if (const toml::array* array = services->as_array(); array && array->empty()) {
      error(services->source(), "service", "at least one [[service]] is required");
    }
  } else {
    error(root.source(), "service", "at least one [[service]] is required");
  }

  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    if (a.pos.line != b.pos.line) return a.pos.line < b.pos.line;
    return a.pos.column < b.pos.column;
  });
  result.errors = std::move(errors_);
  if (result.errors.empty()) {
    result.config = std::move(config_);
  } else {
    result.partial = std::move(config_);
  }
  return result;
}

LoadResult file_error(const std::string& path, std::string message) {
  LoadResult result;
  result.errors.push_back(ConfigError{SourcePos{path, 0, 0}, "", std::move(message)});
  return result;
}

}  // namespace detail

using detail::file_error;
using detail::Loader;

// Positions of 0 mean "the whole file" (e.g. it cannot be read): then only "file: message".
std::string ConfigError::str() const {
  std::string out = pos.file;
  if (pos.line > 0) out += ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column);
  out += ": ";
  if (!key.empty()) out += key + ": ";
  out += message;
  return out;
}

unsigned Config::effective_workers() const {
  if (workers > 0) return workers;
  return std::max(1u, std::thread::hardware_concurrency());
}

const char* to_string(LogLevel level) {
  switch (level) {
    case LogLevel::error:
      return "error";
    case LogLevel::warn:
      return "warn";
    case LogLevel::info:
      return "info";
    case LogLevel::debug:
      return "debug";
  }
  return "info";
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
  if (text == "error") return LogLevel::error;
  if (text == "warn") return LogLevel::warn;
  if (text == "info") return LogLevel::info;
  if (text == "debug") return LogLevel::debug;
  return std::nullopt;
}

LoadResult load_config_string(std::string_view toml_text, const std::string& path) {
  try {
    return Loader(path).run(toml_text);
  } catch (const std::exception& e) {
    return file_error(path, std::string("cannot load: ") + e.what());
  } catch (...) {
    return file_error(path, "cannot load: unknown error");
  }
}

LoadResult load_config_file(const std::string& path) {
  try {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) return file_error(path, "is a directory");
    std::ifstream in(path, std::ios::binary);
    if (!in) return file_error(path, std::string("cannot open: ") + std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) return file_error(path, "cannot read file");
    return load_config_string(text.str(), path);
  } catch (const std::exception& e) {
    return file_error(path, std::string("cannot load: ") + e.what());
  }
}

}  // namespace ferry
