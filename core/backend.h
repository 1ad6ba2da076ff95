#pragma once
// Backends at run time: the groups a connection may be sent to (a service's `connect` or a
// route's), how the next backend is chosen (round-robin, failover, least-connections) and passive
// health (max_fails consecutive failed connects mark a backend down for fail_timeout).
// Built once per Runtime on the main thread; then shared by every worker: the only mutable state
// is atomics (health, active counts, the round-robin cursor).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "core/socket_address.h"

namespace prometheus {
class Counter;
class Gauge;
}  // namespace prometheus

namespace ferry {

struct Backend {
  Endpoint endpoint;       // as configured
  std::string label;       // endpoint.str(): the metrics' backend label and the logs'
  SocketAddress address;   // numeric hosts and unix paths; unset (len 0) for names
  bool needs_dns = false;  // a host name: resolved per connection, asynchronously

  // Shared by all workers.
  mutable std::atomic<unsigned> fails{0};          // consecutive failed connects
  mutable std::atomic<uint64_t> down_until_ms{0};  // steady-clock ms; 0 or past: eligible
  mutable std::atomic<int> active{0};              // connections using it now

  prometheus::Gauge* up = nullptr;  // null in --check and unit tests
  prometheus::Counter* connections = nullptr;
  prometheus::Counter* connect_failures = nullptr;
};

class BackendGroup {
 public:
  BackendGroup(const BackendGroupConfig& config, unsigned max_fails,
               std::chrono::milliseconds fail_timeout);

  // The next backend to try for a connection that has already tried the ones in `tried` (bit i
  // = backends()[i]); -1 when every one was tried. Eligible backends first, in the order the
  // balance mode gives (round-robin starts at `cursor`, from start_cursor()); backends marked
  // down only when no eligible one is left, so a connection is never refused without trying.
  int pick(uint64_t tried, uint64_t cursor, uint64_t now_ms) const;
  uint64_t start_cursor() const;  // round-robin: advances the shared cursor once per connection

  // Outcome of one connect to backends()[i]. Logs when a backend goes down or comes back.
  void connect_failed(size_t i, const std::string& service, uint64_t now_ms) const;
  void connect_succeeded(size_t i, const std::string& service) const;

  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }
  Balance balance() const { return balance_; }
  ProxyProtocol proxy_protocol() const { return proxy_protocol_; }

 private:
  bool eligible(const Backend& b, uint64_t now_ms) const {
    return b.down_until_ms.load(std::memory_order_relaxed) <= now_ms;
  }

  std::vector<std::unique_ptr<Backend>> backends_;
  Balance balance_;
  ProxyProtocol proxy_protocol_;
  unsigned max_fails_;
  uint64_t fail_timeout_ms_;
  mutable std::atomic<uint64_t> cursor_{0};
};

// [[service.route]] at run time, by server name.
class Router {
 public:
  struct Route {
    std::string sni;  // "api.example.com" or "*.example.com"
    std::unique_ptr<BackendGroup> group;
  };

  void add(std::string sni, std::unique_ptr<BackendGroup> group);
  // The route for a server name (exact first, then a one-label wildcard); null if none.
  // Case-insensitive; a trailing dot is ignored.
  const BackendGroup* find(std::string_view server_name) const;
  bool empty() const { return routes_.empty(); }
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

uint64_t steady_ms();  // the clock of down_until_ms

}  // namespace ferry
