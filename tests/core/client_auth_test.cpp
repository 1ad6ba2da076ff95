#include "core/client_auth.h"

#include <doctest/doctest.h>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/handshake_failure.h"
#include "core/openssl_ptr.h"
#include "core/ticket_keys.h"
#include "tests/core/test_certs.h"

namespace ferry {
namespace {

using test::CertSpec;
using test::KeyKind;
using test::TempDir;

const SourcePos kCaPos{"/etc/ferry/ferry.toml", 12, 13};
const SourcePos kCrlPos{"/etc/ferry/ferry.toml", 13, 7};

// A CA and the client certificates it (or a stranger) signs.
struct Pki {
  EvpPkeyPtr ca_key = test::make_key(KeyKind::ec_p256);
  X509Ptr ca;
  EvpPkeyPtr client_key = test::make_key(KeyKind::ec_p256);

  // Every CA gets its own name: one with the same name would be found as the issuer and fail
  // on the signature instead.
  Pki() {
    static std::atomic<int> count{0};
    CertSpec spec;
    spec.cn = "Clients CA " + std::to_string(++count);
    spec.org = "Acme";
    spec.sans = {};
    spec.is_ca = true;
    ca = test::make_cert(spec, ca_key.get());
  }

  X509Ptr client(const CertSpec& spec) const {
    return test::make_cert(spec, client_key.get(), ca.get(), ca_key.get());
  }
};

CertSpec client_spec(const std::string& cn = "app1",
                     std::vector<std::string> sans = {"DNS:app1.internal"}) {
  CertSpec spec;
  spec.cn = cn;
  spec.org = "Acme";
  spec.sans = std::move(sans);
  return spec;
}

ServiceConfig make_service(const TempDir& dir, const Pki& pki, VerifyClient mode) {
  ServiceConfig s;
  s.index = 2;
  s.name = "mtls";
  s.pos = {"/etc/ferry/ferry.toml", 10, 1};
  s.tls.client_ca = dir.write("clients-ca.pem", test::to_pem(pki.ca.get()));
  s.tls.client_ca_pos = kCaPos;
  s.tls.verify_client = mode;
  s.tls.crl_pos = kCrlPos;
  return s;
}

struct Configured {
  SslCtxPtr ctx;
  std::vector<ConfigError> errors;
  bool ok = false;
};

// A server context of our own (not build_server_tls_context) with a self-signed certificate.
Configured configure(const ServiceConfig& service) {
  Configured c;
  c.ctx.reset(SSL_CTX_new(TLS_server_method()));
  REQUIRE(c.ctx);
  auto key = test::make_key(KeyKind::ec_p256);
  auto cert = test::make_cert(CertSpec{}, key.get());
  REQUIRE(SSL_CTX_use_certificate(c.ctx.get(), cert.get()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(c.ctx.get(), key.get()) == 1);
  static const unsigned char kSidCtx[] = "ferry-test";
  REQUIRE(SSL_CTX_set_session_id_context(c.ctx.get(), kSidCtx, sizeof kSidCtx - 1) == 1);
  std::vector<ConfigError> warnings;
  c.ok = configure_client_auth(c.ctx.get(), service, c.errors, warnings);
  CHECK(warnings.empty());
  return c;
}

SslCtxPtr server_ctx(const ServiceConfig& service) {
  Configured c = configure(service);
  for (const auto& e : c.errors) CAPTURE(e.str());
  REQUIRE(c.errors.empty());
  REQUIRE(c.ok);
  return std::move(c.ctx);
}

SslCtxPtr client_ctx(X509* cert = nullptr, EVP_PKEY* key = nullptr, int version = 0) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(ctx);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  if (version != 0) SSL_CTX_set_max_proto_version(ctx.get(), version);
  if (cert != nullptr) {
    REQUIRE(SSL_CTX_use_certificate(ctx.get(), cert) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), key) == 1);
  }
  return ctx;
}

struct Result {
  bool server_done = false;
  bool server_failed = false;
  std::string reasons;
  std::optional<HandshakeFailure> failure;  // client_auth_failure() after a failure
  SslPtr server;
  SslPtr client;
};

// Runs a handshake over an in-memory BIO pair until the server finishes or fails.
Result handshake(SSL_CTX* server_ctx, SSL_CTX* client_ctx, SSL_SESSION* session = nullptr) {
  Result r{
      false, false, {}, std::nullopt, SslPtr(SSL_new(server_ctx)), SslPtr(SSL_new(client_ctx))};
  REQUIRE(r.server);
  REQUIRE(r.client);
  BIO* server_bio = nullptr;
  BIO* client_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&server_bio, 0, &client_bio, 0) == 1);
  SSL_set_bio(r.server.get(), server_bio, server_bio);
  SSL_set_bio(r.client.get(), client_bio, client_bio);
  SSL_set_accept_state(r.server.get());
  SSL_set_connect_state(r.client.get());
  if (session != nullptr) REQUIRE(SSL_set_session(r.client.get(), session) == 1);
  bool client_done = false;
  bool client_failed = false;
  for (int i = 0; i < 50 && !r.server_failed; ++i) {
    if (!client_done && !client_failed) {
      ERR_clear_error();
      int rc = SSL_do_handshake(r.client.get());
      int e = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(r.client.get(), rc);
      client_done = rc == 1;
      client_failed = rc != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
      ERR_clear_error();
    }
    if (!r.server_done) {
      ERR_clear_error();
      int rc = SSL_do_handshake(r.server.get());
      if (rc == 1) {
        r.server_done = true;
      } else {
        int e = SSL_get_error(r.server.get(), rc);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
          r.server_failed = true;
          r.reasons = drain_openssl_errors();
          r.failure = client_auth_failure(r.server.get());
        }
      }
    }
    if (r.server_done && client_done) break;
  }
  if (r.server_done) {
    // TLS 1.3: the client reads the server's tickets (and, on a rejected certificate, its
    // alert) after its own handshake finished.
    char byte;
    ERR_clear_error();
    SSL_read(r.client.get(), &byte, 1);
    ERR_clear_error();
  }
  return r;
}

// The client's view after a server-side failure: it got the server's alert.
int client_alert(const Result& r) {
  char byte;
  ERR_clear_error();
  int rc = SSL_read(r.client.get(), &byte, 1);
  unsigned long err = ERR_peek_error();
  ERR_clear_error();
  if (rc > 0 || ERR_GET_LIB(err) != ERR_LIB_SSL) return 0;
  int reason = ERR_GET_REASON(err);
  return reason >= SSL_AD_REASON_OFFSET ? reason - SSL_AD_REASON_OFFSET : -1;
}

}  // namespace

// --- verify_client ------------------------------------------------------------------------

TEST_CASE("client auth: required and no certificate fails with no_client_cert") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  CHECK(SSL_CTX_get_verify_mode(server.get()) ==
        (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(nullptr, nullptr, version);
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::no_client_cert);
    CHECK(r.reasons.find("peer did not return a certificate") != std::string::npos);
    if (version == TLS1_3_VERSION) CHECK(client_alert(r) == SSL_AD_CERTIFICATE_REQUIRED);
  }
}

TEST_CASE("client auth: the CA's name is sent in the certificate request") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  STACK_OF(X509_NAME)* names = SSL_CTX_get_client_CA_list(server.get());
  REQUIRE(sk_X509_NAME_num(names) == 1);
  CHECK(X509_NAME_cmp(sk_X509_NAME_value(names, 0), X509_get_subject_name(pki.ca.get())) == 0);
}

TEST_CASE("client auth: required and a valid certificate succeeds") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  X509Ptr cert = pki.client(client_spec());
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get(), version);
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    REQUIRE(r.server_done);
    X509* peer = SSL_get0_peer_certificate(r.server.get());
    REQUIRE(peer != nullptr);
    CHECK(X509_cmp(peer, cert.get()) == 0);
    CHECK(SSL_get_verify_result(r.server.get()) == X509_V_OK);
    CHECK_FALSE(client_auth_failure(r.server.get()));
  }
}

TEST_CASE("client auth: optional and no certificate succeeds") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::optional));
  CHECK(SSL_CTX_get_verify_mode(server.get()) == SSL_VERIFY_PEER);
  SslCtxPtr client = client_ctx();
  Result r = handshake(server.get(), client.get());
  CAPTURE(r.reasons);
  REQUIRE(r.server_done);
  CHECK(SSL_get0_peer_certificate(r.server.get()) == nullptr);
}

TEST_CASE("client auth: optional and a certificate from another CA fails with unknown_ca") {
  TempDir dir;
  Pki pki;
  Pki stranger;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::optional));
  X509Ptr cert = stranger.client(client_spec());
  SslCtxPtr client = client_ctx(cert.get(), stranger.client_key.get());
  Result r = handshake(server.get(), client.get());
  CAPTURE(r.reasons);
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::unknown_ca);
  CHECK(client_alert(r) == SSL_AD_UNKNOWN_CA);
}

TEST_CASE("client auth: required and a certificate from another CA fails with unknown_ca") {
  TempDir dir;
  Pki pki;
  Pki stranger;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    X509Ptr cert = stranger.client(client_spec());
    SslCtxPtr client = client_ctx(cert.get(), stranger.client_key.get(), version);
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::unknown_ca);
    CHECK(r.reasons.find("certificate verify failed") != std::string::npos);
  }
}

TEST_CASE("client auth: a self-signed client certificate fails with unknown_ca") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  X509Ptr cert = test::make_cert(client_spec(), pki.client_key.get());
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::unknown_ca);
}

TEST_CASE("client auth: an expired or not yet valid certificate fails with cert_expired") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  const std::time_t now = std::time(nullptr);
  for (auto [from, to] :
       {std::pair{now - 10 * 86400, now - 86400}, std::pair{now + 86400, now + 10 * 86400}}) {
    CertSpec spec = client_spec();
    spec.not_before = from;
    spec.not_after = to;
    X509Ptr cert = pki.client(spec);
    SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::cert_expired);
  }
}

TEST_CASE("client auth: optional and an expired certificate is refused") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::optional));
  CertSpec spec = client_spec();
  spec.not_before = std::time(nullptr) - 10 * 86400;
  spec.not_after = std::time(nullptr) - 86400;
  X509Ptr cert = pki.client(spec);
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::cert_expired);
  CHECK(client_alert(r) == SSL_AD_CERTIFICATE_EXPIRED);
}

TEST_CASE("client auth: a certificate for servers only fails with bad_certificate") {
  TempDir dir;
  Pki pki;
  SslCtxPtr server = server_ctx(make_service(dir, pki, VerifyClient::required));
  X509Ptr cert = pki.client(client_spec());
  // extendedKeyUsage = serverAuth: not usable as a client certificate.
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, pki.ca.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_ext_key_usage, "serverAuth");
  REQUIRE(ext != nullptr);
  REQUIRE(X509_add_ext(cert.get(), ext, -1) == 1);
  X509_EXTENSION_free(ext);
  REQUIRE(X509_sign(cert.get(), pki.ca_key.get(), EVP_sha256()) > 0);
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::bad_certificate);
}

// --- CRL ----------------------------------------------------------------------------------

TEST_CASE("client auth: a certificate revoked by the CRL fails with cert_revoked") {
  TempDir dir;
  Pki pki;
  X509Ptr revoked = pki.client(client_spec("gone"));
  X509Ptr good = pki.client(client_spec("app1"));
  auto crl = test::make_crl(pki.ca.get(), pki.ca_key.get(), {revoked.get()});
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.crl = dir.write("clients.crl", test::to_pem(crl.get()));
  SslCtxPtr server = server_ctx(service);

  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(revoked.get(), pki.client_key.get(), version);
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::cert_revoked);
    CHECK(client_alert(r) == SSL_AD_CERTIFICATE_REVOKED);
  }
  SslCtxPtr client = client_ctx(good.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  CAPTURE(r.reasons);
  CHECK(r.server_done);
}

TEST_CASE("client auth: with a CRL, a certificate whose issuer has no CRL is refused") {
  TempDir dir;
  Pki pki;
  Pki other;
  // The CRL file only has another CA's CRL; the client CA file has both CAs.
  auto crl = test::make_crl(other.ca.get(), other.ca_key.get(), {});
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.client_ca =
      dir.write("both.pem", test::to_pem(pki.ca.get()) + test::to_pem(other.ca.get()));
  service.tls.crl = dir.write("clients.crl", test::to_pem(crl.get()));
  SslCtxPtr server = server_ctx(service);
  X509Ptr cert = pki.client(client_spec());
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::bad_certificate);
  CHECK(SSL_get_verify_result(r.server.get()) == X509_V_ERR_UNABLE_TO_GET_CRL);
}

// --- allow-lists --------------------------------------------------------------------------

TEST_CASE("client auth: allow_subjects matches the RFC 2253 subject exactly") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_subjects = {"CN=app2,O=Acme", "CN=app1,O=Acme"};
  SslCtxPtr server = server_ctx(service);

  X509Ptr app1 = pki.client(client_spec("app1"));
  SslCtxPtr client = client_ctx(app1.get(), pki.client_key.get());
  Result ok = handshake(server.get(), client.get());
  CAPTURE(ok.reasons);
  CHECK(ok.server_done);

  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    X509Ptr app3 = pki.client(client_spec("app3"));
    SslCtxPtr other = client_ctx(app3.get(), pki.client_key.get(), version);
    Result refused = handshake(server.get(), other.get());
    CAPTURE(refused.reasons);
    REQUIRE(refused.server_failed);
    CHECK(refused.failure == HandshakeFailure::not_allowed);
    CHECK(SSL_get_verify_result(refused.server.get()) == X509_V_ERR_APPLICATION_VERIFICATION);
  }
}

TEST_CASE("client auth: allow_subjects is not a prefix or case-insensitive match") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_subjects = {"CN=app1", "cn=app1,o=acme", "O=Acme,CN=app1"};
  SslCtxPtr server = server_ctx(service);
  X509Ptr app1 = pki.client(client_spec("app1"));
  SslCtxPtr client = client_ctx(app1.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::not_allowed);
}

TEST_CASE("client auth: allow_sans matches a DNS SAN") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_sans = {"app1.internal"};
  SslCtxPtr server = server_ctx(service);

  X509Ptr app1 = pki.client(client_spec("x", {"DNS:other.internal", "DNS:App1.Internal"}));
  SslCtxPtr client = client_ctx(app1.get(), pki.client_key.get());
  Result ok = handshake(server.get(), client.get());
  CAPTURE(ok.reasons);
  CHECK(ok.server_done);

  // No partial, suffix or wildcard matches, and a CN is not a SAN.
  X509Ptr other = pki.client(client_spec(
      "app1.internal", {"DNS:x.app1.internal", "DNS:*.internal", "URI:https://app1.internal/"}));
  SslCtxPtr other_client = client_ctx(other.get(), pki.client_key.get());
  Result refused = handshake(server.get(), other_client.get());
  REQUIRE(refused.server_failed);
  CHECK(refused.failure == HandshakeFailure::not_allowed);
}

TEST_CASE("client auth: allow_sans matches a SPIFFE URI SAN exactly") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_sans = {"spiffe://prod/app1"};
  SslCtxPtr server = server_ctx(service);

  X509Ptr app1 = pki.client(client_spec("x", {"URI:spiffe://prod/app1"}));
  SslCtxPtr client = client_ctx(app1.get(), pki.client_key.get());
  Result ok = handshake(server.get(), client.get());
  CAPTURE(ok.reasons);
  CHECK(ok.server_done);

  for (const char* uri : {"URI:spiffe://prod/app12", "URI:spiffe://prod/App1"}) {
    CAPTURE(uri);
    X509Ptr other = pki.client(client_spec("x", {uri}));
    SslCtxPtr other_client = client_ctx(other.get(), pki.client_key.get());
    Result refused = handshake(server.get(), other_client.get());
    REQUIRE(refused.server_failed);
    CHECK(refused.failure == HandshakeFailure::not_allowed);
  }
}

TEST_CASE("client auth: allow_sans matches IP SANs by address") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_sans = {"10.0.0.7", "[2001:db8::0:1]"};
  SslCtxPtr server = server_ctx(service);
  for (const char* san : {"IP:10.0.0.7", "IP:2001:db8:0:0::1"}) {
    CAPTURE(san);
    X509Ptr cert = pki.client(client_spec("x", {san}));
    SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    CHECK(r.server_done);
  }
  X509Ptr cert = pki.client(client_spec("x", {"IP:10.0.0.8", "DNS:10.0.0.7"}));
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::not_allowed);
}

TEST_CASE("client auth: subject or SAN, either one admits") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_subjects = {"CN=app1,O=Acme"};
  service.tls.allow_sans = {"app2.internal"};
  SslCtxPtr server = server_ctx(service);
  for (auto spec : {client_spec("app1", {}), client_spec("app2", {"DNS:app2.internal"})}) {
    X509Ptr cert = pki.client(spec);
    SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
    Result r = handshake(server.get(), client.get());
    CAPTURE(r.reasons);
    CHECK(r.server_done);
  }
}

TEST_CASE("client auth: the allow-list is checked only after the chain verified") {
  TempDir dir;
  Pki pki;
  Pki stranger;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_subjects = {"CN=app1,O=Acme"};
  SslCtxPtr server = server_ctx(service);
  X509Ptr cert = stranger.client(client_spec("app1"));  // the right name, the wrong CA
  SslCtxPtr client = client_ctx(cert.get(), stranger.client_key.get());
  Result r = handshake(server.get(), client.get());
  REQUIRE(r.server_failed);
  CHECK(r.failure == HandshakeFailure::unknown_ca);
}

// --- resumption ---------------------------------------------------------------------------

TEST_CASE("client auth: a session from before client auth was enabled does not resume") {
  TempDir dir;
  Pki pki;
  ServiceConfig plain;
  plain.name = "mtls";
  plain.tls.ticket_key_file = dir.write("tickets.key", std::string(160, 'a') + "\n");
  ServiceConfig mtls = make_service(dir, pki, VerifyClient::required);
  mtls.tls.ticket_key_file = plain.tls.ticket_key_file;
  std::vector<ConfigError> errors, warnings;
  Configured before = configure(plain);
  SslCtxPtr after = server_ctx(mtls);
  REQUIRE(configure_session_tickets(before.ctx.get(), plain, errors, warnings));
  REQUIRE(configure_session_tickets(after.get(), mtls, errors, warnings));

  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(nullptr, nullptr, version);
    Result first = handshake(before.ctx.get(), client.get());
    REQUIRE(first.server_done);
    SSL_SESSION* session = SSL_get1_session(first.client.get());
    REQUIRE(session != nullptr);
    REQUIRE(SSL_SESSION_is_resumable(session) == 1);
    // Sanity check: the ticket does resume on a context with the same policy.
    Result again = handshake(before.ctx.get(), client.get(), session);
    REQUIRE(again.server_done);
    CHECK(SSL_session_reused(again.server.get()) == 1);

    Result r = handshake(after.get(), client.get(), session);
    SSL_SESSION_free(session);
    CAPTURE(r.reasons);
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::no_client_cert);
  }
}

TEST_CASE("client auth: a verified session resumes with its client certificate") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  SslCtxPtr server = server_ctx(service);
  X509Ptr cert = pki.client(client_spec());
  SslCtxPtr client = client_ctx(cert.get(), pki.client_key.get());
  Result first = handshake(server.get(), client.get());
  REQUIRE(first.server_done);
  SSL_SESSION* session = SSL_get1_session(first.client.get());
  REQUIRE(session != nullptr);
  Result second = handshake(server.get(), client.get(), session);
  SSL_SESSION_free(session);
  REQUIRE(second.server_done);
  CHECK(SSL_session_reused(second.server.get()) == 1);
  X509* peer = SSL_get0_peer_certificate(second.server.get());
  REQUIRE(peer != nullptr);
  CHECK(X509_cmp(peer, cert.get()) == 0);
}

// --- contexts switched by SNI -------------------------------------------------------------

namespace {

// A client hello callback switching the handshake to the context in `arg`, as SNI does.
int switch_context(SSL* ssl, int* /*alert*/, void* arg) {
  return SSL_set_SSL_CTX(ssl, static_cast<SSL_CTX*>(arg)) != nullptr ? SSL_CLIENT_HELLO_SUCCESS
                                                                     : SSL_CLIENT_HELLO_ERROR;
}

}  // namespace

TEST_CASE("client auth: a context switched to by SNI verifies with its own set-up") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  service.tls.allow_subjects = {"CN=app1,O=Acme"};
  SslCtxPtr first = server_ctx(service);
  X509Ptr app1 = pki.client(client_spec("app1"));
  X509Ptr app2 = pki.client(client_spec("app2"));

  SUBCASE("configured the same way: the CA and the allow-list apply") {
    SslCtxPtr sni = server_ctx(service);
    SSL_CTX_set_client_hello_cb(first.get(), switch_context, sni.get());
    SslCtxPtr ok_client = client_ctx(app1.get(), pki.client_key.get());
    Result ok = handshake(first.get(), ok_client.get());
    CAPTURE(ok.reasons);
    CHECK(ok.server_done);
    SslCtxPtr refused_client = client_ctx(app2.get(), pki.client_key.get());
    Result refused = handshake(first.get(), refused_client.get());
    REQUIRE(refused.server_failed);
    CHECK(refused.failure == HandshakeFailure::not_allowed);
  }
  SUBCASE("not configured: every certificate is refused") {
    Configured sni = configure(ServiceConfig{});
    SSL_CTX_set_client_hello_cb(first.get(), switch_context, sni.ctx.get());
    SslCtxPtr client = client_ctx(app1.get(), pki.client_key.get());
    Result r = handshake(first.get(), client.get());
    REQUIRE(r.server_failed);
    CHECK(r.failure == HandshakeFailure::unknown_ca);
  }
}

// --- configuration errors -----------------------------------------------------------------

TEST_CASE("client auth: nothing is set up without client_ca or with verify_client none") {
  TempDir dir;
  Pki pki;
  ServiceConfig none = make_service(dir, pki, VerifyClient::none);
  Configured c = configure(none);
  CHECK(c.ok);
  CHECK(SSL_CTX_get_verify_mode(c.ctx.get()) == SSL_VERIFY_NONE);
  ServiceConfig empty;
  Configured d = configure(empty);
  CHECK(d.ok);
  CHECK(SSL_CTX_get_verify_mode(d.ctx.get()) == SSL_VERIFY_NONE);
  SslCtxPtr client = client_ctx();
  CHECK(handshake(d.ctx.get(), client.get()).server_done);
}

TEST_CASE("client auth: CA and CRL file errors are reported at their keys") {
  TempDir dir;
  Pki pki;
  struct Case {
    std::string ca_content;  // empty: no such file
    std::string crl_content;
    std::vector<std::string> expected;
  };
  const std::string ca = test::to_pem(pki.ca.get());
  const std::string crl = test::to_pem(test::make_crl(pki.ca.get(), pki.ca_key.get(), {}).get());
  const std::string ca_path = dir.file("ca.pem");
  const std::string crl_path = dir.file("c.crl");
  const std::string at_ca = "/etc/ferry/ferry.toml:12:13: service[2].client_ca: ";
  const std::string at_crl = "/etc/ferry/ferry.toml:13:7: service[2].crl: ";
  const std::vector<Case> cases = {
      {"", "", {at_ca + "cannot read \"" + ca_path + "\": No such file or directory"}},
      {"hello\n", "", {at_ca + "no CA certificate found in \"" + ca_path + "\""}},
      {crl, "", {at_ca + "no CA certificate found in \"" + ca_path + "\""}},
      {ca, "", {at_crl + "cannot read \"" + crl_path + "\": No such file or directory"}},
      {ca, "hello\n", {at_crl + "no CRL found in \"" + crl_path + "\""}},
      {ca, ca, {at_crl + "no CRL found in \"" + crl_path + "\""}},
      {"",
       "x",
       {at_ca + "cannot read \"" + ca_path + "\": No such file or directory",
        at_crl + "no CRL found in \"" + crl_path + "\""}},
  };
  for (const auto& c : cases) {
    std::filesystem::remove(ca_path);
    std::filesystem::remove(crl_path);
    ServiceConfig service = make_service(dir, pki, VerifyClient::required);
    service.tls.client_ca = ca_path;
    if (!c.ca_content.empty()) dir.write("ca.pem", c.ca_content);
    if (!c.crl_content.empty()) {
      service.tls.crl = dir.write("c.crl", c.crl_content);
    } else if (c.ca_content == ca) {
      service.tls.crl = crl_path;
    }
    Configured r = configure(service);
    CHECK_FALSE(r.ok);
    std::vector<std::string> got;
    for (const auto& e : r.errors) got.push_back(e.str());
    CHECK(got == c.expected);
    CHECK(SSL_CTX_get_verify_mode(r.ctx.get()) == SSL_VERIFY_NONE);
  }
}

TEST_CASE("client auth: a corrupt PEM block in client_ca cannot be parsed") {
  TempDir dir;
  Pki pki;
  ServiceConfig service = make_service(dir, pki, VerifyClient::required);
  std::string pem = test::to_pem(pki.ca.get());
  pem.insert(pem.find('\n') + 5, "!!!!");
  service.tls.client_ca = dir.write("bad.pem", pem);
  Configured r = configure(service);
  CHECK_FALSE(r.ok);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "service[2].client_ca");
  CHECK(r.errors[0].message.rfind("cannot parse \"" + service.tls.client_ca + "\": ", 0) == 0);
}

}  // namespace ferry
