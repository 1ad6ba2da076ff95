#include "core/backend.h"

#include <arpa/inet.h>

#include <cstring>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include "core/log.h"
#include "core/sni_selector.h"

namespace ferry {
namespace {

// A numeric host ("127.0.0.1", "::1") as an address without DNS; nullopt for names.
std::optional<SocketAddress> numeric(const HostPort& hp) {
  SocketAddress out;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (inet_pton(AF_INET, hp.host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(hp.port);
    out.len = sizeof(sockaddr_in);
    return out;
  }
  if (hp.host.find('%') == std::string::npos &&
      inet_pton(AF_INET6, hp.host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(hp.port);
    out.len = sizeof(sockaddr_in6);
    return out;
  }
  return std::nullopt;
}

}  // namespace

uint64_t steady_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

BackendGroup::BackendGroup(const BackendGroupConfig& config, unsigned max_fails,
                           std::chrono::milliseconds fail_timeout)
    : balance_(config.balance),
      proxy_protocol_(config.proxy_protocol),
      max_fails_(max_fails),
      fail_timeout_ms_(static_cast<uint64_t>(fail_timeout.count())) {
  for (const Endpoint& e : config.backends) {
    auto b = std::make_unique<Backend>();
    b->endpoint = e;
    b->label = e.str();
    if (e.is_unix()) {
      if (auto addr = SocketAddress::from_unix(e.unix_path)) b->address = *addr;
    } else if (auto addr = numeric(e.tcp)) {
      b->address = *addr;
    } else {
      b->needs_dns = true;
    }
    backends_.push_back(std::move(b));
  }
}

uint64_t BackendGroup::start_cursor() const {
  if (balance_ != Balance::round_robin) return 0;
  return cursor_.fetch_add(1, std::memory_order_relaxed);
}

int BackendGroup::pick(uint64_t tried, uint64_t cursor, uint64_t now_ms) const {
  const size_t n = backends_.size();
  if (n == 0) return -1;
  // Pass 0: eligible backends only; pass 1: the ones marked down, as a last resort.
  for (int pass = 0; pass < 2; ++pass) {
    int best = -1;
    int best_active = 0;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (balance_ == Balance::failover) ? k : (cursor + k) % n;
      if (tried & (uint64_t{1} << i)) continue;
      const Backend& b = *backends_[i];
      if ((pass == 0) != eligible(b, now_ms)) continue;
      if (balance_ != Balance::least_connections) return static_cast<int>(i);
      const int active = b.active.load(std::memory_order_relaxed);
      if (best < 0 || active < best_active) {
        best = static_cast<int>(i);
        best_active = active;
      }
    }
    if (best >= 0) return best;
  }
  return -1;
}

void BackendGroup::connect_failed(size_t i, const std::string& service, uint64_t now_ms) const {
  const Backend& b = *backends_[i];
  if (b.connect_failures) b.connect_failures->Increment();
  const unsigned fails = b.fails.fetch_add(1, std::memory_order_relaxed) + 1;
  if (fails < max_fails_) return;
  // Down (again, if it failed on its first try after fail_timeout): skip it for a while.
  const uint64_t until = now_ms + fail_timeout_ms_;
  const uint64_t before = b.down_until_ms.exchange(until, std::memory_order_relaxed);
  if (b.up) b.up->Set(0);
  if (before <= now_ms) {
    LOG_WARN("service %s: backend %s marked down for %llums after %u failed connect%s",
             service.c_str(), b.label.c_str(), static_cast<unsigned long long>(fail_timeout_ms_),
             fails, fails == 1 ? "" : "s");
  }
}

void BackendGroup::connect_succeeded(size_t i, const std::string& service) const {
  const Backend& b = *backends_[i];
  if (b.connections) b.connections->Increment();
  const unsigned fails = b.fails.exchange(0, std::memory_order_relaxed);
  if (fails >= max_fails_) {
    b.down_until_ms.store(0, std::memory_order_relaxed);
    LOG_INFO("service %s: backend %s is up again", service.c_str(), b.label.c_str());
  }
  if (fails > 0 && b.up) b.up->Set(1);
}

void Router::add(std::string sni, std::unique_ptr<BackendGroup> group) {
  routes_.push_back(Route{ascii_lower(sni), std::move(group)});
}

const BackendGroup* Router::find(std::string_view server_name) const {
  if (routes_.empty() || server_name.empty()) return nullptr;
  // The same matching as certificate selection (SniSelector): exact, then one-label wildcard.
  const std::string name = normalized_server_name(server_name);
  for (const Route& r : routes_) {
    if (r.sni == name) return r.group.get();
  }
  const std::string_view parent = wildcard_parent(name);
  if (parent.empty()) return nullptr;
  for (const Route& r : routes_) {
    if (r.sni.starts_with("*.") && std::string_view(r.sni).substr(2) == parent) {
      return r.group.get();
    }
  }
  return nullptr;
}

}  // namespace ferry
