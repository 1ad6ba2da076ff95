// Loader, part 3: where a service's connections come from and go to: backends and their
// balancing, SNI routes, the PROXY protocol both ways, limits, access lists, socket options.
#include <algorithm>
#include <string>
#include <utility>

#include "config/loader_internal.h"

namespace ferry::detail {
namespace {

constexpr size_t kMaxBackends = 64;  // per group: a connection tracks tried ones in a bit mask

bool valid_route_name(std::string_view name) {
  if (name.starts_with("*.")) name.remove_prefix(2);
  if (name.empty() || name.size() > 253 || name.front() == '.' || name.back() == '.') return false;
  char prev = '.';
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    if (!ok || (c == '.' && prev == '.')) return false;
    prev = c;
  }
  return true;
}

}  // namespace

bool Loader::integer_at(const toml::table& table, std::string_view name, const std::string& key,
                        int64_t min, int64_t max, int64_t& out) {
  const toml::node* node = table.get(name);
  if (!node) return false;
  const auto* value = node->as_integer();
  if (!value) {
    type_error(*node, key, "an integer");
    return false;
  }
  if (value->get() < min || value->get() > max) {
    error(node->source(), key,
          "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return false;
  }
  out = value->get();
  return true;
}

void Loader::cidrs_at(const toml::table& table, std::string_view name, const std::string& key,
                      std::vector<Cidr>& out) {
  std::vector<std::string> texts;
  if (!strings_at(table, name, key, texts)) return;
  // Walk the array itself, not `texts`: strings_at skips elements of the wrong type, so their
  // indexes would no longer match.
  const toml::array& array = *table.get(name)->as_array();
  for (size_t i = 0; i < array.size(); ++i) {
    const auto* text = array.get(i)->as_string();
    if (!text || text->get().empty()) continue;  // reported by strings_at
    std::string why;
    if (auto cidr = parse_cidr(text->get(), &why)) {
      out.push_back(*cidr);
    } else {
      error(array.get(i)->source(), key + "[" + std::to_string(i) + "]",
            "bad address range " + in_quotes(text->get()) + ": " + why);
    }
  }
}

// `connect` (a string or an array of strings), `balance` and `proxy_protocol` of a service or
// a route table.
void Loader::backend_group_at(const toml::table& table, const std::string& prefix, bool client,
                              BackendGroupConfig& group) {
  if (const toml::node* node = table.get("connect")) {
    std::vector<std::pair<std::string, const toml::node*>> items;
    if (const auto* one = node->as_string()) {
      items.emplace_back(prefix + "connect", one);
    } else if (const toml::array* array = node->as_array()) {
      if (array->empty()) error(node->source(), prefix + "connect", "must not be empty");
      if (array->size() > kMaxBackends) {
        error(node->source(), prefix + "connect",
              "at most " + std::to_string(kMaxBackends) + " backends");
      }
      for (size_t i = 0; i < array->size() && i < kMaxBackends; ++i) {
        items.emplace_back(prefix + "connect[" + std::to_string(i) + "]", array->get(i));
      }
    } else {
      type_error(*node, prefix + "connect", "a string or an array of strings");
    }
    for (const auto& [key, item] : items) {
      const auto* text = item->as_string();
      if (!text) {
        type_error(*item, key, "a string");
        continue;
      }
      std::string why;
      auto endpoint = parse_endpoint(text->get(), &why);
      if (!endpoint) {
        error(item->source(), key, "bad address " + in_quotes(text->get()) + ": " + why);
        continue;
      }
      const std::string written = endpoint->str();
      const auto first = std::find_if(group.backends.begin(), group.backends.end(),
                                      [&](const Endpoint& e) { return e.str() == written; });
      if (first != group.backends.end()) {
        const SourcePos& at = group.positions[first - group.backends.begin()];
        error(item->source(), key,
              "duplicate backend " + written + " (first at line " + std::to_string(at.line) + ")");
        continue;
      }
      group.backends.push_back(std::move(*endpoint));
      group.positions.push_back(pos_of(item->source()));
    }
  }
  if (const std::string* balance = string_at(table, "balance", prefix + "balance")) {
    if (*balance == "round-robin") {
      group.balance = Balance::round_robin;
    } else if (*balance == "failover") {
      group.balance = Balance::failover;
    } else if (*balance == "least-connections") {
      group.balance = Balance::least_connections;
    } else {
      error(table.get("balance")->source(), prefix + "balance",
            "bad balance " + in_quotes(*balance) +
                " (use round-robin, failover or least-connections)");
    }
  }
  if (const std::string* pp = string_at(table, "proxy_protocol", prefix + "proxy_protocol")) {
    if (client) {
      error(table.get("proxy_protocol")->source(), prefix + "proxy_protocol",
            "only for mode = \"server\" (the header goes to the plaintext backend)");
    } else if (*pp == "none") {
      group.proxy_protocol = ProxyProtocol::none;  // also overrides the service's, in a route
    } else if (*pp == "v1") {
      group.proxy_protocol = ProxyProtocol::v1;
    } else if (*pp == "v2") {
      group.proxy_protocol = ProxyProtocol::v2;
    } else {
      error(table.get("proxy_protocol")->source(), prefix + "proxy_protocol",
            "bad version " + in_quotes(*pp) + " (use v1, v2 or none)");
    }
  }
}

void Loader::load_service_network(const toml::table& table, const std::string& prefix,
                                  ServiceConfig& service) {
  const bool client = service.mode == ServiceMode::client;
  auto source = [&](std::string_view name) { return table.get(name)->source(); };
  auto server_only = [&](std::string_view name) {
    if (!table.contains(name)) return false;
    if (!client) return true;
    error(source(name), prefix + std::string(name), "only for mode = \"server\"");
    return false;
  };

  // ---- where connections go ----
  backend_group_at(table, prefix, client, service.connect);
  if (table.contains("connect")) service.connect_pos = pos_of(source("connect"));
  if (server_only("route")) {
    const toml::node& node = *table.get("route");
    const toml::array* routes = node.as_array();
    if (!routes) {
      type_error(node, prefix + "route", "an array of tables ([[service.route]])");
    } else {
      std::map<std::string, int> seen;  // sni -> line
      for (size_t i = 0; i < routes->size(); ++i) {
        const std::string rprefix = prefix + "route[" + std::to_string(i) + "].";
        const toml::table* rt =
            table_at(*routes->get(i), prefix + "route[" + std::to_string(i) + "]");
        if (!rt) continue;
        check_keys(*rt, rprefix, {"sni", "connect", "balance", "proxy_protocol"});
        RouteConfig route;
        route.pos = pos_of(rt->source());
        // A route without its own balance or proxy_protocol follows the service's.
        route.group.balance = service.connect.balance;
        route.group.proxy_protocol = service.connect.proxy_protocol;
        if (!rt->contains("sni")) error(rt->source(), rprefix + "sni", "missing required key");
        if (const std::string* sni = string_at(*rt, "sni", rprefix + "sni")) {
          route.sni = ascii_lower(*sni);
          if (!valid_route_name(route.sni)) {
            error(rt->get("sni")->source(), rprefix + "sni",
                  "bad server name " + in_quotes(*sni) +
                      " (a DNS name, or *.example.com for exactly one more label)");
          } else if (auto [it, fresh] = seen.emplace(
                         route.sni, static_cast<int>(rt->get("sni")->source().begin.line));
                     !fresh) {
            error(rt->get("sni")->source(), rprefix + "sni",
                  "duplicate route for " + in_quotes(route.sni) + " (first at line " +
                      std::to_string(it->second) + ")");
          }
        }
        if (!rt->contains("connect")) {
          error(rt->source(), rprefix + "connect", "missing required key");
        }
        backend_group_at(*rt, rprefix, false, route.group);
        service.routes.push_back(std::move(route));
      }
    }
  }
  if (!table.contains("connect") && (client || service.routes.empty())) {
    error(table.source(), prefix + "connect", "missing required key");
  }

  int64_t value = 0;
  if (integer_at(table, "max_fails", prefix + "max_fails", 1, 1000, value)) {
    service.max_fails = static_cast<unsigned>(value);
  }
  duration_at(table, "fail_timeout", prefix + "fail_timeout", service.fail_timeout);

  // ---- where connections come from ----
  if (server_only("accept_proxy")) {
    bool_at(table, "accept_proxy", prefix + "accept_proxy", service.accept_proxy);
  }
  if (server_only("accept_proxy_from")) {
    cidrs_at(table, "accept_proxy_from", prefix + "accept_proxy_from", service.accept_proxy_from);
    const toml::node* accept_proxy = table.get("accept_proxy");
    if (!service.accept_proxy && (!accept_proxy || accept_proxy->is_boolean())) {
      error(source("accept_proxy_from"), prefix + "accept_proxy_from", "needs accept_proxy = true");
    }
  }
  if (integer_at(table, "max_connections", prefix + "max_connections", 0, 10'000'000, value)) {
    service.max_connections = static_cast<unsigned>(value);
  }
  cidrs_at(table, "allow", prefix + "allow", service.allow);
  cidrs_at(table, "deny", prefix + "deny", service.deny);
  if (const toml::node* node = table.get("tcp_keepalive")) {
    const auto* ka = node->as_string();
    if (!ka) {
      type_error(*node, prefix + "tcp_keepalive", "a duration string such as \"60s\" or \"off\"");
    } else if (ka->get() == "off" || ka->get() == "0") {
      service.tcp_keepalive = std::chrono::milliseconds(0);
    } else {
      std::chrono::milliseconds keepalive{0};
      duration_at(table, "tcp_keepalive", prefix + "tcp_keepalive", keepalive);
      if (keepalive.count() > 0 && keepalive.count() < 1000) {
        error(node->source(), prefix + "tcp_keepalive", "must be at least 1s (or off)");
      } else {
        service.tcp_keepalive = keepalive;
      }
    }
  }
  if (integer_at(table, "backlog", prefix + "backlog", 1, 65535, value)) {
    service.backlog = static_cast<int>(value);
  }

  // ---- Unix listeners ----
  // A bad "unix:..." accept is reported there; its socket options are not blamed as well.
  const toml::node* accept = table.get("accept");
  const bool unix_accept =
      !service.accept_unix.empty() ||
      (accept && accept->is_string() && accept->as_string()->get().starts_with("unix:"));
  for (std::string_view name : {"unix_mode", "unix_owner", "unix_group"}) {
    if (table.contains(name) && !unix_accept) {
      error(source(name), prefix + std::string(name), "only with accept = \"unix:/path\"");
    }
  }
  if (const toml::node* node = table.get("unix_mode")) {
    if (const auto* mode = node->as_string()) {
      const std::string& text = mode->get();
      const bool ok = text.size() >= 3 && text.size() <= 4 &&
                      text.find_first_not_of("01234567") == std::string::npos &&
                      (text.size() == 3 || text[0] == '0');
      if (ok) {
        service.unix_mode = static_cast<int>(std::stoi(text, nullptr, 8));
      } else {
        error(node->source(), prefix + "unix_mode",
              "bad mode " + in_quotes(text) + " (octal permission bits, e.g. \"0660\")");
      }
    } else {
      // A string, not an integer: unix_mode = 660 would silently be decimal.
      type_error(*node, prefix + "unix_mode", "an octal string such as \"0660\"");
    }
  }
  for (auto [name, out] : {std::pair{"unix_owner", &service.unix_owner},
                           std::pair{"unix_group", &service.unix_group}}) {
    if (const std::string* who = string_at(table, name, prefix + name)) {
      if (who->empty()) error(source(name), prefix + name, "must not be empty");
      *out = *who;
    }
  }
}

}  // namespace ferry::detail
