#pragma once
// The policy keys of a server-mode service (min/max_version, ciphers, ciphersuites, groups,
// alpn, record_padding) applied on top of ferry's defaults, and the --check findings about
// them. Certificates and the defaults themselves are in tls_context.cpp.

#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "config/config.h"

namespace ferry {

// Applies service.tls to `ctx`. `alpn` is the list in wire format (see alpn_wire()), or null;
// it must outlive `ctx`. Problems are appended to `errors` (when not null) at the keys'
// positions; returns false on any.
bool apply_tls_policy_keys(SSL_CTX* ctx, const ServiceConfig& service, const std::string* alpn,
                           std::vector<ConfigError>* errors);

// ["h2", "http/1.1"] -> "\x02h2\x08http/1.1".
std::string alpn_wire(const std::vector<std::string>& protocols);

// For an explicit `ciphers`: the TLS 1.2 suites `ctx` could negotiate (versions, security
// level, and a certificate of the right type: `rsa` / `ecdsa` say which are loaded). None is an
// error; suites without forward secrecy or AEAD are a warning naming them.
void check_tls12_ciphers(SSL_CTX* ctx, const ServiceConfig& service, bool rsa, bool ecdsa,
                         std::vector<ConfigError>& errors, std::vector<ConfigError>& warnings);

}  // namespace ferry
