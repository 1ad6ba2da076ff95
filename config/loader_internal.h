#pragma once
// Internal to config/: the TOML walker shared by loader.cpp (global, metrics, services) and
// loader_tls.cpp (per-service TLS policy). Not part of the config interface.

#include <toml++/toml.h>

#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace ferry::detail {

std::string_view type_name(toml::node_type type);
std::string in_quotes(std::string_view text);

class Loader {
 public:
  explicit Loader(std::string path) : path_(std::move(path)) { config_.path = path_; }

  LoadResult run(std::string_view text);

 private:
  SourcePos pos_of(const toml::source_region& where) const {
    return SourcePos{path_, static_cast<int>(where.begin.line),
                     static_cast<int>(where.begin.column)};
  }
  void error(const toml::source_region& where, std::string key, std::string message) {
    errors_.push_back(ConfigError{pos_of(where), std::move(key), std::move(message)});
  }
  void type_error(const toml::node& node, const std::string& key, std::string_view expected) {
    error(node.source(), key,
          "expected " + std::string(expected) + ", got " + std::string(type_name(node.type())));
  }

  void check_keys(const toml::table& table, const std::string& prefix,
                  std::initializer_list<std::string_view> known);
  const toml::table* table_at(const toml::node& node, const std::string& key);
  const std::string* string_at(const toml::table& table, std::string_view name,
                               const std::string& key);
  void duration_at(const toml::table& table, std::string_view name, const std::string& key,
                   std::chrono::milliseconds& out);
  void bool_at(const toml::table& table, std::string_view name, const std::string& key, bool& out);
  bool address_at(const toml::table& table, std::string_view name, const std::string& key,
                  HostPort& out, SourcePos& pos);
  std::string resolve_path(const std::string& file) const;

  void load_global(const toml::node& node);
  void load_metrics(const toml::node& node);
  void load_services(const toml::node& node);
  void load_service(const toml::node& node, size_t index);
  // loader_tls.cpp: TLS policy keys of one service (both modes), cross-checked with its mode.
  void load_service_tls(const toml::table& table, const std::string& prefix,
                        ServiceConfig& service);
  // loader_backends.cpp: connect, routes, PROXY protocol, limits, access lists, socket options.
  void load_service_network(const toml::table& table, const std::string& prefix,
                            ServiceConfig& service);
  void backend_group_at(const toml::table& table, const std::string& prefix, bool client,
                        BackendGroupConfig& group);
  void cidrs_at(const toml::table& table, std::string_view name, const std::string& key,
                std::vector<Cidr>& out);
  bool integer_at(const toml::table& table, std::string_view name, const std::string& key,
                  int64_t min, int64_t max, int64_t& out);
  const std::vector<std::string>* strings_at(const toml::table& table, std::string_view name,
                                             const std::string& key, std::vector<std::string>& out);

  std::string path_;
  Config config_;
  std::vector<ConfigError> errors_;
  // For duplicate checks: name -> line of its first use; accept address -> who uses it.
  std::map<std::string, int> names_;
  std::map<std::string, std::string> accepts_;
};

}  // namespace ferry::detail
