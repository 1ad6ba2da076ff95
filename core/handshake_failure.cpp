#include "core/handshake_failure.h"

#include <openssl/x509_vfy.h>

#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace ferry {
namespace {

bool is_peer_gone_errno(int e) {
  return e == ECONNRESET || e == EPIPE;
}

}  // namespace

const char* to_string(HandshakeFailure reason) {
  switch (reason) {
    case HandshakeFailure::timeout:
      return "timeout";
    case HandshakeFailure::not_tls:
      return "not_tls";
    case HandshakeFailure::protocol_version:
      return "protocol_version";
    case HandshakeFailure::no_shared_cipher:
      return "no_shared_cipher";
    case HandshakeFailure::peer_closed:
      return "peer_closed";
    case HandshakeFailure::no_application_protocol:
      return "no_application_protocol";
    case HandshakeFailure::no_client_cert:
      return "no_client_cert";
    case HandshakeFailure::unknown_ca:
      return "unknown_ca";
    case HandshakeFailure::cert_revoked:
      return "cert_revoked";
    case HandshakeFailure::cert_expired:
      return "cert_expired";
    case HandshakeFailure::not_allowed:
      return "not_allowed";
    case HandshakeFailure::hostname_mismatch:
      return "hostname_mismatch";
    case HandshakeFailure::bad_certificate:
      return "bad_certificate";
    case HandshakeFailure::unknown_sni:
      return "unknown_sni";
    case HandshakeFailure::other:
      return "other";
  }
  return "other";
}

HandshakeFailure classify_handshake_failure(int ssl_error, unsigned long err, int sys_errno,
                                            bool saw_client_hello) {
  if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
    return HandshakeFailure::peer_closed;
  }
  if (err != 0 && ERR_GET_LIB(err) == ERR_LIB_SSL) {
    switch (ERR_GET_REASON(err)) {
      case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return HandshakeFailure::peer_closed;
      case SSL_R_UNSUPPORTED_PROTOCOL:
      case SSL_R_VERSION_TOO_LOW:
      case SSL_R_VERSION_TOO_HIGH:
      case SSL_R_WRONG_SSL_VERSION:
      case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        return HandshakeFailure::protocol_version;
      // Nothing in common to negotiate: cipher suites, and in TLS 1.3 also key-exchange groups
      // and signature algorithms.
      case SSL_R_NO_SHARED_CIPHER:
      case SSL_R_NO_SHARED_GROUPS:
      case SSL_R_NO_SUITABLE_KEY_SHARE:
      case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
      case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
        return HandshakeFailure::no_shared_cipher;
      // ALPN: ours (server) or the peer's alert (client) found no protocol in common.
      case SSL_R_NO_APPLICATION_PROTOCOL:
      case SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL:
        return HandshakeFailure::no_application_protocol;
      default:
        break;
    }
  }
  if (err != 0 && ERR_GET_LIB(err) == ERR_LIB_SYS &&
      is_peer_gone_errno(static_cast<int>(ERR_GET_REASON(err)))) {
    return HandshakeFailure::peer_closed;
  }
  if (is_peer_gone_errno(sys_errno)) return HandshakeFailure::peer_closed;
  // Whatever broke before a ClientHello could be parsed (an HTTP request, a bad record header,
  // garbage) means the peer does not speak TLS.
  if (!saw_client_hello) return HandshakeFailure::not_tls;
  return HandshakeFailure::other;
}

std::string drain_openssl_errors(unsigned long* first) {
  // Reason strings for libssl are only registered by its initialisation; make sure it ran.
  static const bool strings_loaded =
      OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr) ==
      1;
  (void)strings_loaded;
  std::string out;
  if (first != nullptr) *first = 0;
  for (;;) {
    unsigned long e = ERR_get_error();
    if (e == 0) break;
    if (first != nullptr && *first == 0) *first = e;
    std::string text;
    char buf[256];
    if (ERR_SYSTEM_ERROR(e)) {
      // No reason string table for errno values: GNU strerror_r is thread-safe.
      text = strerror_r(static_cast<int>(ERR_GET_REASON(e)), buf, sizeof buf);
    } else if (const char* reason = ERR_reason_error_string(e); reason != nullptr) {
      text = reason;
    } else {
      ERR_error_string_n(e, buf, sizeof buf);
      text = buf;
    }
    if (!out.empty()) out += "; ";
    out += text;
  }
  return out;
}

HandshakeFailure classify_verify_result(long x509_error) {
  switch (x509_error) {
    case X509_V_OK:
      return HandshakeFailure::other;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
      return HandshakeFailure::unknown_ca;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return HandshakeFailure::cert_expired;
    case X509_V_ERR_CERT_REVOKED:
      return HandshakeFailure::cert_revoked;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return HandshakeFailure::hostname_mismatch;
    default:
      return HandshakeFailure::bad_certificate;
  }
}

}  // namespace ferry
