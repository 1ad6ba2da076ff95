#pragma once
// Choosing a server certificate by SNI: an index from DNS names (exact and "*.example.com"
// wildcards) to the SSL_CTX holding the certificate(s) for them. Built once with the service's
// TLS context, then only read (from every worker's ClientHello callback).

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace ferry {

class SniSelector {
 public:
  // Serve `ctx` (not owned) for `names`: lower-case DNS names, wildcards as "*.example.com".
  // A name already taken keeps the context it was first added with.
  void add(SSL_CTX* ctx, const std::vector<std::string>& names);

  // The context for a server name: an exact match, then a wildcard covering exactly one more
  // label; nullptr when neither (the caller keeps its default). Case-insensitive.
  SSL_CTX* select(std::string_view server_name) const;

 private:
  std::unordered_map<std::string, SSL_CTX*> exact_;
  std::unordered_map<std::string, SSL_CTX*> wildcard_;  // "example.com" for "*.example.com"
};

// A requested server name as the indexes compare it: lower case, without a trailing dot.
std::string normalized_server_name(std::string_view server_name);
// What a one-label wildcard for `name` covers: "example.com" for "a.example.com" ("*.example.com"
// matches it); "" when there is none.
std::string_view wildcard_parent(std::string_view name);

// The names a certificate serves, lower-case, in the certificate's order: its DNS SANs, or its
// subject CN when it has no DNS SAN at all.
std::vector<std::string> certificate_dns_names(X509* cert);

// Inside a ClientHello callback: the host_name of the server_name extension, "" if none.
std::string client_hello_server_name(SSL* ssl);

}  // namespace ferry
