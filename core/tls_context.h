#pragma once
// Building server-side SSL_CTXs from a ServiceConfig: the one place TLS policy is decided.

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "core/openssl_ptr.h"
#include "core/sni_selector.h"

namespace ferry {

struct CertificateInfo {
  std::string subject;            // RFC 2253 form, e.g. "CN=localhost,O=Acme"
  std::vector<std::string> sans;  // "DNS:localhost", "IP Address:127.0.0.1"
  std::time_t not_after = 0;      // Unix time
  std::string key_type;           // "RSA 2048", "EC P-256", "Ed25519"
  bool expired = false;
};

struct ServerTlsContext {
  SslCtxPtr ctx;  // the default: the service's cert (and extra pairs for the same names)
  CertificateInfo cert;
  std::vector<CertificateInfo> extra_certs;  // [[service.certificates]], in config order
  // Contexts chosen by SNI (same policy as `ctx`) and what the callbacks installed on every
  // context point at: all kept alive as long as `ctx`. Null / empty when not configured.
  std::vector<SslCtxPtr> sni_contexts;
  std::unique_ptr<SniSelector> sni;
  std::unique_ptr<std::string> alpn;  // server preference, ALPN wire format
};

// Loads cert chain and key, checks they match, applies ferry's default policy (TLS 1.2+,
// ECDHE+AEAD for 1.2, server preference, no compression, no renegotiation, tickets + cache)
// and then service.tls (versions, ciphers, groups, ALPN, padding, client auth, ticket keys).
// Extra [[service.certificates]] are loaded with the same checks and chosen by SNI.
// Warnings: expired / not yet valid / expiring within 30 days, chains out of order, weak
// cipher suites asked for explicitly.
// Problems are appended to `errors` / `warnings` with the positions of the service's cert/key
// keys; returns nullopt if there was any error.
std::optional<ServerTlsContext> build_server_tls_context(const ServiceConfig& service,
                                                         std::vector<ConfigError>& errors,
                                                         std::vector<ConfigError>& warnings);

// A per-connection check of the requested server name, run by the ClientHello callback after the
// certificate choice (attach with set_sni_gate). `allow` returning false refuses the handshake
// with an unrecognized_name alert and sets `refused`.
struct SniGate {
  bool (*allow)(void* arg, std::string_view server_name) = nullptr;
  void* arg = nullptr;
  bool refused = false;
};
void set_sni_gate(SSL* ssl, SniGate* gate);

// ex_data index on SSL objects, set to non-null by the ClientHello callback once a ClientHello
// was parsed. The handshake-failure classifier uses it to tell "not TLS at all" apart.
int client_hello_seen_index();
bool client_hello_seen(const SSL* ssl);

}  // namespace ferry
