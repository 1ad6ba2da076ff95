#pragma once
// Runtime: a validated Config plus everything built from it (SSL_CTXs, resolved addresses,
// metric handles). Immutable once built; workers and connections share it through
// shared_ptr<const Runtime>, so a reload can swap it for new connections only.

#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/tls_context.h"

namespace ferry {

class Metrics;
struct ServiceMetrics;

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t len = 0;

  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  std::string str() const;  // "127.0.0.1:8080", "[::1]:8443"
};

struct ServiceRuntime {
  ServiceConfig config;
  size_t index = 0;
  SocketAddress accept;
  SocketAddress backend;
  ServerTlsContext tls;
  ServiceMetrics* metrics = nullptr;  // null in --check
};

struct Runtime {
  Config config;
  std::vector<ServiceRuntime> services;
};

struct RuntimeResult {
  std::shared_ptr<const Runtime> runtime;  // null when errors is non-empty
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings;
};

// Resolve addresses, load certificates and keys, build TLS contexts. `metrics` may be null
// (--check). Reports every problem with the position of the key it came from.
RuntimeResult build_runtime(const Config& config, Metrics* metrics);

// Resolve "host:port" to one socket address (numeric hosts never touch DNS). Control plane only.
bool resolve(const HostPort& hp, bool passive, SocketAddress& out, std::string& why);

}  // namespace ferry
