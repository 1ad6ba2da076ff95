#pragma once
// The bounded set of reasons a server-side TLS handshake fails, used by logs and metrics.

#include <array>
#include <string>

namespace ferry {

enum class HandshakeFailure { timeout, not_tls, protocol_version, no_shared_cipher, peer_closed, other };

inline constexpr std::array kAllHandshakeFailures = {
    HandshakeFailure::timeout,          HandshakeFailure::not_tls,
    HandshakeFailure::protocol_version, HandshakeFailure::no_shared_cipher,
    HandshakeFailure::peer_closed,      HandshakeFailure::other};

const char* to_string(HandshakeFailure reason);  // "timeout", "not_tls", ...

// Classify a failed SSL_do_handshake():
//   ssl_error        SSL_get_error() of the failing call
//   err              the first packed error from the OpenSSL error queue (0 if none)
//   sys_errno        errno right after the call (for SSL_ERROR_SYSCALL)
//   saw_client_hello whether a ClientHello was parsed (client_hello_seen())
HandshakeFailure classify_handshake_failure(int ssl_error, unsigned long err, int sys_errno,
                                            bool saw_client_hello);

// Drain the whole thread-local OpenSSL error queue into one readable string
// ("wrong version number; ..."), using the thread-safe ERR_error_string_n. Returns the first
// packed error code through `first` when given.
std::string drain_openssl_errors(unsigned long* first = nullptr);

}  // namespace ferry
