#pragma once
// Building server-side SSL_CTXs from a ServiceConfig: the one place TLS policy is decided.

#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/openssl_ptr.h"

namespace ferry {

struct CertificateInfo {
  std::string subject;            // RFC 2253 form, e.g. "CN=localhost,O=Acme"
  std::vector<std::string> sans;  // "DNS:localhost", "IP Address:127.0.0.1"
  std::time_t not_after = 0;      // Unix time
  std::string key_type;           // "RSA 2048", "EC P-256", "Ed25519"
  bool expired = false;
};

struct ServerTlsContext {
  SslCtxPtr ctx;
  CertificateInfo cert;
};

// Loads cert chain and key, checks they match, applies ferry's default policy (TLS 1.2+,
// ECDHE+AEAD for 1.2, server preference, no compression, no renegotiation, tickets + cache).
// Problems are appended to `errors` / `warnings` with the positions of the service's cert/key
// keys; returns nullopt if there was any error.
std::optional<ServerTlsContext> build_server_tls_context(const ServiceConfig& service,
                                                        std::vector<ConfigError>& errors,
                                                        std::vector<ConfigError>& warnings);

// ex_data index on SSL objects, set to non-null by the ClientHello callback once a ClientHello
// was parsed. The handshake-failure classifier uses it to tell "not TLS at all" apart.
int client_hello_seen_index();
bool client_hello_seen(const SSL* ssl);

}  // namespace ferry
