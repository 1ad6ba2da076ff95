#pragma once
// The bounded set of reasons a server-side TLS handshake fails, used by logs and metrics.

#include <array>
#include <string>

namespace ferry {

enum class HandshakeFailure {
  timeout,
  not_tls,
  protocol_version,
  no_shared_cipher,
  peer_closed,
  no_application_protocol,  // ALPN configured, no overlap with the client's offer
  no_client_cert,           // verify_client = required and the client sent none
  unknown_ca,               // the peer's chain does not lead to a trusted CA
  cert_revoked,             // listed in the CRL
  cert_expired,             // the peer's certificate is expired (or not yet valid)
  not_allowed,              // verified, but not on allow_subjects / allow_sans
  hostname_mismatch,        // client mode: the server's certificate is not for server_name
  bad_certificate,          // any other verification failure
  unknown_sni,              // no route for the server name and no default backend
  other,
};

inline constexpr std::array kAllHandshakeFailures = {
    HandshakeFailure::timeout,          HandshakeFailure::not_tls,
    HandshakeFailure::protocol_version, HandshakeFailure::no_shared_cipher,
    HandshakeFailure::peer_closed,      HandshakeFailure::no_application_protocol,
    HandshakeFailure::no_client_cert,   HandshakeFailure::unknown_ca,
    HandshakeFailure::cert_revoked,     HandshakeFailure::cert_expired,
    HandshakeFailure::not_allowed,      HandshakeFailure::hostname_mismatch,
    HandshakeFailure::bad_certificate,  HandshakeFailure::unknown_sni,
    HandshakeFailure::other};

const char* to_string(HandshakeFailure reason);  // "timeout", "not_tls", ...

// Classify a failed SSL_do_handshake():
//   ssl_error        SSL_get_error() of the failing call
//   err              the first packed error from the OpenSSL error queue (0 if none)
//   sys_errno        errno right after the call (for SSL_ERROR_SYSCALL)
//   saw_client_hello whether a ClientHello was parsed (client_hello_seen())
HandshakeFailure classify_handshake_failure(int ssl_error, unsigned long err, int sys_errno,
                                            bool saw_client_hello);

// The reason for a certificate verification result (X509_V_ERR_*, as SSL_get_verify_result()
// gives it); X509_V_OK maps to `other`.
HandshakeFailure classify_verify_result(long x509_error);

// Drain the whole thread-local OpenSSL error queue into one readable string
// ("wrong version number; ..."), using the thread-safe ERR_error_string_n. Returns the first
// packed error code through `first` when given.
std::string drain_openssl_errors(unsigned long* first = nullptr);

}  // namespace ferry
