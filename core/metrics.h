#pragma once
// ferry's Prometheus metrics. Families are created once at start; per-service handles are
// resolved once (Family::Add takes a lock) and the data path only increments them.

#include <array>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <openssl/ssl.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "config/config.h"
#include "core/end_reason.h"
#include "core/handshake_failure.h"

namespace ferry {

struct Backend;

// Handles for one service. Owned by Metrics; stable for the life of the process.
struct ServiceMetrics {
  struct HandshakeKey {
    int version;         // TLS1_2_VERSION / TLS1_3_VERSION
    uint32_t cipher_id;  // SSL_CIPHER_get_id
    prometheus::Counter* counter;
  };

  prometheus::Counter* connections = nullptr;
  prometheus::Gauge* active = nullptr;
  std::array<prometheus::Counter*, kAllEndReasons.size()> closed{};
  std::array<prometheus::Counter*, kAllHandshakeFailures.size()> handshake_failures{};
  prometheus::Histogram* handshake_duration = nullptr;
  prometheus::Counter* sessions_resumed = nullptr;
  prometheus::Counter* bytes_to_backend = nullptr;
  prometheus::Counter* bytes_to_client = nullptr;
  prometheus::Counter* rejected_denied = nullptr;
  prometheus::Counter* rejected_bad_proxy_header = nullptr;
  prometheus::Counter* rejected_proxy_not_allowed = nullptr;
  prometheus::Counter* listener_paused = nullptr;
  prometheus::Histogram* connection_duration = nullptr;
  std::vector<HandshakeKey> handshakes;  // one per (version, cipher) the context can negotiate

  prometheus::Family<prometheus::Counter>* handshakes_family = nullptr;
  std::string name;

  prometheus::Counter& closed_for(EndReason r) { return *closed[static_cast<size_t>(r)]; }
  prometheus::Counter& failures_for(HandshakeFailure r) {
    return *handshake_failures[static_cast<size_t>(r)];
  }
  // The counter for a finished handshake; falls back to Family::Add for a combination that was
  // not pre-registered (should not happen).
  prometheus::Counter& handshake_for(const SSL* ssl);
};

class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Control plane only. Returns the same handles for the same service name.
  ServiceMetrics& service(const std::string& name);
  // The per-backend series (up, connections, connect failures) of one of a service's backends.
  void register_backend(const std::string& service, Backend& backend);
  // Pre-register ferry_handshakes_total series for every cipher `ctx` can negotiate.
  void register_ciphers(ServiceMetrics& service, SSL_CTX* ctx);
  // The certificates a service serves now (subject, notAfter); replaces the previous set.
  void set_certificate_expiry(const std::string& service,
                              const std::vector<std::pair<std::string, std::time_t>>& certs);

  // A configuration reload finished (ferry_config_reloads_total and the last-reload gauges).
  void record_reload(bool success);

  // Starts the HTTP endpoint serving /metrics. Throws std::runtime_error if it cannot listen.
  void start_exposer(const HostPort& listen);

  // The text exposition of everything (used by tests and by --check free paths).
  std::string serialize() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> process_;  // process_* metrics from /proc
  prometheus::Family<prometheus::Counter>& connections_;
  prometheus::Family<prometheus::Gauge>& active_;
  prometheus::Family<prometheus::Counter>& closed_;
  prometheus::Family<prometheus::Counter>& handshakes_;
  prometheus::Family<prometheus::Counter>& handshake_failures_;
  prometheus::Family<prometheus::Histogram>& handshake_duration_;
  prometheus::Family<prometheus::Counter>& sessions_resumed_;
  prometheus::Family<prometheus::Counter>& bytes_;
  prometheus::Family<prometheus::Gauge>& backend_up_;
  prometheus::Family<prometheus::Counter>& backend_connections_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& listener_paused_;
  prometheus::Family<prometheus::Counter>& backend_connect_failures_;
  prometheus::Family<prometheus::Histogram>& connection_duration_;
  prometheus::Family<prometheus::Gauge>& certificate_expiry_;
  prometheus::Family<prometheus::Gauge>& build_info_;
  prometheus::Family<prometheus::Counter>& reloads_;
  prometheus::Gauge& last_reload_successful_;
  prometheus::Gauge& last_reload_success_time_;
  // service -> its current expiry series, replaced when a reload changes the certificates.
  std::map<std::string, std::vector<prometheus::Gauge*>> expiry_by_service_;
  std::vector<std::unique_ptr<ServiceMetrics>> services_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

const char* tls_version_label(int version);  // "TLSv1.2", "TLSv1.3", "other"

}  // namespace ferry
