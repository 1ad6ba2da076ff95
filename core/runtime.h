#pragma once
// Runtime: a validated Config plus everything built from it (SSL_CTXs, resolved addresses,
// metric handles). Immutable once built; workers and connections share it through
// shared_ptr<const Runtime>, so a reload can swap it for new connections only.

#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/backend.h"
#include "core/socket_address.h"
#include "core/tls_client_context.h"
#include "core/tls_context.h"

namespace ferry {

class Metrics;
struct ServiceMetrics;

// State of a service shared by every worker and carried across reloads (by service name).
struct ServiceState {
  std::atomic<unsigned> connections{0};  // live connections, for max_connections

  // Take a connection slot; false at the limit (0 = no limit: always true, not counted).
  bool try_reserve(unsigned max) {
    if (max == 0) return true;
    unsigned now = connections.load(std::memory_order_relaxed);
    while (now < max) {
      if (connections.compare_exchange_weak(now, now + 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void release(unsigned max) {
    if (max != 0) connections.fetch_sub(1, std::memory_order_relaxed);
  }
};

struct ServiceRuntime {
  ServiceConfig config;
  size_t index = 0;
  SocketAddress accept;  // IP or Unix; unset for systemd sockets (config.accept_systemd)
  std::unique_ptr<BackendGroup> backends;  // `connect`; null when the service only has routes
  Router router;                           // [[service.route]]
  std::shared_ptr<ServiceState> state;
  // Shared with the previous Runtime when nothing it was built from changed, so a reload does
  // not rebuild (and double the memory of) unchanged certificates.
  std::shared_ptr<const ServerTlsContext> tls;         // server mode
  std::shared_ptr<const ClientTlsContext> client_tls;  // client mode
  std::string tls_fingerprint;        // name, paths and SHA-256 of the cert and key file contents
  ServiceMetrics* metrics = nullptr;  // null in --check

  std::string listen_key() const;             // identifies the listening socket across reloads
  bool admits(const sockaddr* client) const;  // allow/deny
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
// (--check). Reports every problem with the position of the key it came from. With `previous`
// (a reload), TLS contexts whose inputs did not change are reused.
RuntimeResult build_runtime(const Config& config, Metrics* metrics,
                            const Runtime* previous = nullptr);

// "127.0.0.1:9000, 127.0.0.1:9001 (round-robin); sni api.example.com -> unix:/run/api.sock"
std::string connect_summary(const ServiceConfig& service);

// SHA-256 (hex) of a file's contents, "" if unreadable.
std::string file_digest(const std::string& path);

// Every file a service's TLS context reads: certificates, keys, CAs, CRL, ticket keys.
std::vector<std::string> tls_input_files(const ServiceConfig& service);

// Everything a service's TLS context is built from: the policy as configured and the contents of
// every file in tls_input_files(). Equal fingerprints mean the old context can be reused on a
// reload, and that no watched file changed.
std::string tls_fingerprint(const ServiceConfig& service);

// Resolve "host:port" to one socket address (numeric hosts never touch DNS). Control plane only.
bool resolve(const HostPort& hp, bool passive, SocketAddress& out, std::string& why);

}  // namespace ferry
