#include "core/metrics.h"

#include "core/backend.h"

#include <uv.h>

#include <algorithm>
#include <cstring>

#include <prometheus/text_serializer.h>

#include "core/process_metrics.h"

namespace ferry {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

const prometheus::Histogram::BucketBoundaries kHandshakeBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const prometheus::Histogram::BucketBoundaries kConnectionBuckets = {
    0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400};

}  // namespace

const char* tls_version_label(int version) {
  switch (version) {
    case TLS1_2_VERSION:
      return "TLSv1.2";
    case TLS1_3_VERSION:
      return "TLSv1.3";
    default:
      return "other";
  }
}

prometheus::Counter& ServiceMetrics::handshake_for(const SSL* ssl) {
  const int version = SSL_version(ssl);
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  const uint32_t id = cipher ? SSL_CIPHER_get_id(cipher) : 0;
  for (const HandshakeKey& k : handshakes) {
    if (k.cipher_id == id && k.version == version) return *k.counter;
  }
  const char* std_name = cipher ? SSL_CIPHER_standard_name(cipher) : nullptr;
  return handshakes_family->Add({{"service", name},
                                 {"version", tls_version_label(version)},
                                 {"cipher", std_name ? std_name : "unknown"}});
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      process_(std::make_shared<ProcessCollector>()),
      connections_(BuildCounter()
                       .Name("ferry_connections_total")
                       .Help("Accepted client connections.")
                       .Register(*registry_)),
      active_(BuildGauge()
                  .Name("ferry_connections_active")
                  .Help("Client connections currently open.")
                  .Register(*registry_)),
      closed_(BuildCounter()
                  .Name("ferry_connections_closed_total")
                  .Help("Finished client connections by end reason.")
                  .Register(*registry_)),
      handshakes_(BuildCounter()
                      .Name("ferry_handshakes_total")
                      .Help("Successful TLS handshakes by protocol version and cipher (IANA name).")
                      .Register(*registry_)),
      handshake_failures_(BuildCounter()
                              .Name("ferry_handshake_failures_total")
                              .Help("Failed TLS handshakes by reason.")
                              .Register(*registry_)),
      handshake_duration_(BuildHistogram()
                              .Name("ferry_handshake_duration_seconds")
                              .Help("Time from accept to a completed TLS handshake.")
                              .Register(*registry_)),
      sessions_resumed_(BuildCounter()
                            .Name("ferry_sessions_resumed_total")
                            .Help("Handshakes that resumed a TLS session (ticket or cache).")
                            .Register(*registry_)),
      bytes_(BuildCounter()
                 .Name("ferry_bytes_total")
                 .Help("Plaintext bytes relayed, by direction.")
                 .Register(*registry_)),
      backend_up_(BuildGauge()
                      .Name("ferry_backend_up")
                      .Help("1 while a backend is eligible, 0 from being marked down (max_fails) "
                            "until a connect to it succeeds again.")
                      .Register(*registry_)),
      backend_connections_(BuildCounter()
                               .Name("ferry_backend_connections_total")
                               .Help("Successful connects to each backend.")
                               .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("ferry_connections_rejected_total")
                    .Help("Connections closed before any TLS work: denied by allow/deny, a bad "
                          "or missing PROXY header, or a PROXY header from a peer not allowed.")
                    .Register(*registry_)),
      listener_paused_(BuildCounter()
                           .Name("ferry_listener_paused_total")
                           .Help("Times a worker stopped accepting because the service reached "
                                 "max_connections.")
                           .Register(*registry_)),
      backend_connect_failures_(BuildCounter()
                                    .Name("ferry_backend_connect_failures_total")
                                    .Help("Backend connections that failed or timed out.")
                                    .Register(*registry_)),
      connection_duration_(BuildHistogram()
                               .Name("ferry_connection_duration_seconds")
                               .Help("Lifetime of client connections.")
                               .Register(*registry_)),
      certificate_expiry_(BuildGauge()
                              .Name("ferry_certificate_expiry_timestamp_seconds")
                              .Help("notAfter of the served certificate, as Unix time.")
                              .Register(*registry_)),
      build_info_(BuildGauge()
                      .Name("ferry_build_info")
                      .Help("Versions of ferry and the libraries it runs with; always 1.")
                      .Register(*registry_)),
      reloads_(BuildCounter()
                   .Name("ferry_config_reloads_total")
                   .Help("Configuration reloads (SIGHUP or a changed certificate file), by result.")
                   .Register(*registry_)),
      last_reload_successful_(BuildGauge()
                                  .Name("ferry_config_last_reload_successful")
                                  .Help("1 if the last configuration reload succeeded, else 0.")
                                  .Register(*registry_)
                                  .Add({})),
      last_reload_success_time_(
          BuildGauge()
              .Name("ferry_config_last_reload_success_timestamp_seconds")
              .Help("Unix time of the last successful configuration load (start or reload).")
              .Register(*registry_)
              .Add({})) {
  reloads_.Add({{"result", "success"}});
  reloads_.Add({{"result", "failure"}});
  last_reload_successful_.Set(1);
  last_reload_success_time_.SetToCurrentTime();
  build_info_
      .Add({{"version", FERRY_VERSION},
            {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)},
            {"libuv", uv_version_string()}})
      .Set(1);
}

ServiceMetrics& Metrics::service(const std::string& name) {
  for (auto& s : services_) {
    if (s->name == name) return *s;
  }
  auto s = std::make_unique<ServiceMetrics>();
  s->name = name;
  const prometheus::Labels svc{{"service", name}};
  s->connections = &connections_.Add(svc);
  s->active = &active_.Add(svc);
  for (EndReason r : kAllEndReasons) {
    s->closed[static_cast<size_t>(r)] = &closed_.Add({{"service", name}, {"reason", to_string(r)}});
  }
  for (HandshakeFailure r : kAllHandshakeFailures) {
    s->handshake_failures[static_cast<size_t>(r)] =
        &handshake_failures_.Add({{"service", name}, {"reason", to_string(r)}});
  }
  s->handshake_duration = &handshake_duration_.Add(svc, kHandshakeBuckets);
  s->sessions_resumed = &sessions_resumed_.Add(svc);
  s->bytes_to_backend = &bytes_.Add({{"service", name}, {"direction", "to_backend"}});
  s->bytes_to_client = &bytes_.Add({{"service", name}, {"direction", "to_client"}});
  s->rejected_denied = &rejected_.Add({{"service", name}, {"reason", "denied"}});
  s->rejected_bad_proxy_header =
      &rejected_.Add({{"service", name}, {"reason", "bad_proxy_header"}});
  s->rejected_proxy_not_allowed =
      &rejected_.Add({{"service", name}, {"reason", "proxy_not_allowed"}});
  s->listener_paused = &listener_paused_.Add(svc);
  s->connection_duration = &connection_duration_.Add(svc, kConnectionBuckets);
  s->handshakes_family = &handshakes_;
  services_.push_back(std::move(s));
  return *services_.back();
}

void Metrics::register_backend(const std::string& service, Backend& backend) {
  const prometheus::Labels labels{{"service", service}, {"backend", backend.label}};
  backend.up = &backend_up_.Add(labels);
  backend.connections = &backend_connections_.Add(labels);
  backend.connect_failures = &backend_connect_failures_.Add(labels);
  // A new Runtime starts with every backend eligible (health is not carried across reloads).
  backend.up->Set(1);
}

void Metrics::register_ciphers(ServiceMetrics& service, SSL_CTX* ctx) {
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx);
  const long min_version = SSL_CTX_get_min_proto_version(ctx);
  const long max_version = SSL_CTX_get_max_proto_version(ctx);
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
    // TLS 1.3 suites only run under TLS 1.3; the others only under TLS 1.2 (ferry's floor).
    const int version =
        std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if ((min_version && version < min_version) || (max_version && version > max_version)) continue;
    const uint32_t id = SSL_CIPHER_get_id(c);
    bool known = false;
    for (const auto& k : service.handshakes)
      known = known || (k.cipher_id == id && k.version == version);
    if (known) continue;
    auto& counter = handshakes_.Add({{"service", service.name},
                                     {"version", tls_version_label(version)},
                                     {"cipher", SSL_CIPHER_standard_name(c)}});
    service.handshakes.push_back({version, id, &counter});
  }
}

void Metrics::set_certificate_expiry(
    const std::string& service, const std::vector<std::pair<std::string, std::time_t>>& certs) {
  std::vector<prometheus::Gauge*> now;
  for (const auto& [subject, not_after] : certs) {
    auto& gauge = certificate_expiry_.Add({{"service", service}, {"subject", subject}});
    gauge.Set(static_cast<double>(not_after));
    now.push_back(&gauge);
  }
  // Series of certificates this service no longer serves (changed on reload) go away.
  for (prometheus::Gauge* old : expiry_by_service_[service]) {
    if (std::find(now.begin(), now.end(), old) == now.end()) certificate_expiry_.Remove(old);
  }
  expiry_by_service_[service] = std::move(now);
}

void Metrics::record_reload(bool success) {
  reloads_.Add({{"result", success ? "success" : "failure"}}).Increment();
  last_reload_successful_.Set(success ? 1 : 0);
  if (success) last_reload_success_time_.SetToCurrentTime();
}

void Metrics::start_exposer(const HostPort& listen) {
  // One serving thread is plenty for scrapes; civetweb throws if it cannot bind.
  exposer_ = std::make_unique<prometheus::Exposer>(listen.str(), 1);
  exposer_->RegisterCollectable(registry_, "/metrics");
  exposer_->RegisterCollectable(process_, "/metrics");
}

std::string Metrics::serialize() const {
  auto families = registry_->Collect();
  for (auto& f : process_->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace ferry
