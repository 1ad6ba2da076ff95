#include "core/handshake_failure.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <set>
#include <string>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace ferry {
namespace {

unsigned long ssl_reason(int reason) {
  return ERR_PACK(ERR_LIB_SSL, 0, reason);
}

struct Row {
  const char* what;
  int ssl_error;
  unsigned long err;
  int sys_errno;
  bool saw_client_hello;
  HandshakeFailure expected;
};

}  // namespace

TEST_CASE("every handshake failure reason has its metric label") {
  CHECK(std::string(to_string(HandshakeFailure::timeout)) == "timeout");
  CHECK(std::string(to_string(HandshakeFailure::not_tls)) == "not_tls");
  CHECK(std::string(to_string(HandshakeFailure::protocol_version)) == "protocol_version");
  CHECK(std::string(to_string(HandshakeFailure::no_shared_cipher)) == "no_shared_cipher");
  CHECK(std::string(to_string(HandshakeFailure::peer_closed)) == "peer_closed");
  CHECK(std::string(to_string(HandshakeFailure::other)) == "other");

  std::set<std::string> labels;
  for (auto reason : kAllHandshakeFailures) labels.insert(to_string(reason));
  CHECK(labels.size() == kAllHandshakeFailures.size());
}

TEST_CASE("peer going away is classified as peer_closed") {
  const Row rows[] = {
      {"syscall EOF", SSL_ERROR_SYSCALL, 0, 0, false, HandshakeFailure::peer_closed},
      {"syscall EOF after hello", SSL_ERROR_SYSCALL, 0, 0, true, HandshakeFailure::peer_closed},
      {"close_notify", SSL_ERROR_ZERO_RETURN, 0, 0, true, HandshakeFailure::peer_closed},
      {"unexpected EOF", SSL_ERROR_SSL, ssl_reason(SSL_R_UNEXPECTED_EOF_WHILE_READING), 0, false,
       HandshakeFailure::peer_closed},
      {"ECONNRESET errno", SSL_ERROR_SSL, 0, ECONNRESET, true, HandshakeFailure::peer_closed},
      {"EPIPE errno", SSL_ERROR_SSL, 0, EPIPE, false, HandshakeFailure::peer_closed},
      {"ECONNRESET on the queue", SSL_ERROR_SSL, ERR_PACK(ERR_LIB_SYS, 0, ECONNRESET), 0, true,
       HandshakeFailure::peer_closed},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    CHECK(classify_handshake_failure(row.ssl_error, row.err, row.sys_errno, row.saw_client_hello) ==
          row.expected);
  }
}

TEST_CASE("version problems are classified as protocol_version") {
  for (int reason : {SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_VERSION_TOO_LOW, SSL_R_VERSION_TOO_HIGH,
                     SSL_R_WRONG_SSL_VERSION, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION}) {
    CAPTURE(reason);
    CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(reason), 0, true) ==
          HandshakeFailure::protocol_version);
    CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(reason), 0, false) ==
          HandshakeFailure::protocol_version);
  }
}

TEST_CASE("nothing to agree on is classified as no_shared_cipher") {
  for (int reason : {SSL_R_NO_SHARED_CIPHER, SSL_R_NO_SHARED_GROUPS, SSL_R_NO_SUITABLE_KEY_SHARE,
                     SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM}) {
    CAPTURE(reason);
    CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(reason), 0, true) ==
          HandshakeFailure::no_shared_cipher);
  }
}

TEST_CASE("errors before a ClientHello are classified as not_tls") {
  for (int reason : {SSL_R_HTTP_REQUEST, SSL_R_HTTPS_PROXY_REQUEST, SSL_R_WRONG_VERSION_NUMBER,
                     SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_UNEXPECTED_RECORD, SSL_R_LENGTH_TOO_SHORT,
                     SSL_R_UNKNOWN_PROTOCOL, SSL_R_BAD_PACKET_LENGTH}) {
    CAPTURE(reason);
    CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(reason), 0, false) ==
          HandshakeFailure::not_tls);
  }
  CHECK(classify_handshake_failure(SSL_ERROR_SSL, 0, 0, false) == HandshakeFailure::not_tls);
}

TEST_CASE("other errors after a ClientHello are classified as other") {
  CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(SSL_R_BAD_EXTENSION), 0, true) ==
        HandshakeFailure::other);
  CHECK(classify_handshake_failure(SSL_ERROR_SSL, ssl_reason(SSL_R_DECRYPTION_FAILED), 0, true) ==
        HandshakeFailure::other);
  CHECK(classify_handshake_failure(SSL_ERROR_SSL, 0, 0, true) == HandshakeFailure::other);
}

TEST_CASE("drain_openssl_errors joins every queued reason and empties the queue") {
  ERR_clear_error();
  ERR_raise(ERR_LIB_SSL, SSL_R_WRONG_VERSION_NUMBER);
  ERR_raise(ERR_LIB_SSL, SSL_R_HTTP_REQUEST);
  ERR_raise(ERR_LIB_SYS, ECONNRESET);
  unsigned long first = 0;
  std::string text = drain_openssl_errors(&first);
  CHECK(text == "wrong version number; http request; Connection reset by peer");
  CHECK(ERR_GET_LIB(first) == ERR_LIB_SSL);
  CHECK(ERR_GET_REASON(first) == SSL_R_WRONG_VERSION_NUMBER);
  CHECK(ERR_peek_error() == 0);
}

TEST_CASE("drain_openssl_errors on an empty queue") {
  ERR_clear_error();
  unsigned long first = 42;
  CHECK(drain_openssl_errors(&first).empty());
  CHECK(first == 0);
  CHECK(drain_openssl_errors().empty());
}

}  // namespace ferry
