#pragma once
// Client mode: the SSL_CTX ferry uses to originate TLS to the upstream server, and what each
// upstream SSL needs before its handshake (SNI, the name to verify, a session to resume).

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/openssl_ptr.h"

namespace ferry {

// The latest session of one client-mode service, shared by every worker (resumption upstream).
// Thread-safe; holds at most one session.
class ClientSessionCache {
 public:
  ClientSessionCache() = default;
  ClientSessionCache(const ClientSessionCache&) = delete;
  ClientSessionCache& operator=(const ClientSessionCache&) = delete;
  ~ClientSessionCache();

  void store(SSL_SESSION* session);  // takes a reference of its own
  SSL_SESSION* take_ref() const;     // a new reference for SSL_set_session, or null; caller frees

 private:
  mutable std::mutex mutex_;
  SSL_SESSION* session_ = nullptr;  // guarded by mutex_
};

struct ClientTlsContext {
  SslCtxPtr ctx;
  std::shared_ptr<ClientSessionCache> sessions;  // also reachable from the SSL_CTX's ex_data
};

// Verification on by default: chain against `ca` (file or directory) or the system store, and
// the server name (or IP) of `server_name`. `verify = false` is a warning. Optional client
// certificate, ALPN offer, version/cipher/group policy. Errors carry the keys' positions.
std::optional<ClientTlsContext> build_client_tls_context(const ServiceConfig& service,
                                                        std::vector<ConfigError>& errors,
                                                        std::vector<ConfigError>& warnings);

// Per upstream connection, before SSL_connect: SNI (not for IP literals), the host/IP to
// verify, and the cached session to resume. Returns false (OpenSSL error queue set) on failure.
bool prepare_client_ssl(SSL* ssl, const ServiceConfig& service, const ClientTlsContext& tls);

}  // namespace ferry
