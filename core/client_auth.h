#pragma once
// Server mode: verifying client certificates (mTLS) — client_ca, verify_client, crl and the
// allow-lists — applied to a server SSL_CTX. Failures end the handshake with an alert, so no
// backend connection is made, and carry a reason for the metrics (see client_auth_failure()).

#include <vector>

#include <openssl/ssl.h>

#include "config/config.h"
#include "core/handshake_failure.h"

namespace ferry {

// Set up verification on `ctx` per service.tls (nothing when client_ca is empty). Loads the CA
// and CRL files; allow-lists are checked in the verify callback after chain verification.
// Problems are appended with the positions of the keys; returns false on any error.
bool configure_client_auth(SSL_CTX* ctx, const ServiceConfig& service,
                           std::vector<ConfigError>& errors, std::vector<ConfigError>& warnings);

// After a failed server handshake: the client-authentication reason, if the failure was one
// (no certificate, unknown CA, revoked, expired, not on an allow-list); nullopt otherwise.
std::optional<HandshakeFailure> client_auth_failure(const SSL* ssl);

}  // namespace ferry
