#include "core/tls_client_context.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "core/handshake_failure.h"
#include "tests/core/test_certs.h"

namespace ferry {
namespace {

using test::CertSpec;
using test::KeyKind;
using test::TempDir;

constexpr const char* kConfigFile = "/etc/ferry/ferry.toml";

// A CA and what it issued, each as objects and as PEM files in a temp dir.
struct Issued {
  EvpPkeyPtr key;
  X509Ptr cert;
};

struct Pki {
  TempDir dir;
  Issued ca;
  std::string ca_file;

  explicit Pki(const std::string& cn = "Ferry Test CA") {
    CertSpec spec;
    spec.cn = cn;
    spec.sans = {};
    spec.is_ca = true;
    ca.key = test::make_key(KeyKind::ec_p256);
    ca.cert = test::make_cert(spec, ca.key.get());
    ca_file = dir.write("ca.pem", test::to_pem(ca.cert.get()));
  }

  // A leaf for `spec` (default: CN=localhost, DNS:localhost, IP:127.0.0.1) signed by the CA.
  Issued issue(const CertSpec& spec = {}) const {
    Issued leaf;
    leaf.key = test::make_key(KeyKind::ec_p256);
    leaf.cert = test::make_cert(spec, leaf.key.get(), ca.cert.get(), ca.key.get());
    return leaf;
  }
};

// What the test's upstream server does besides presenting `leaf`.
struct ServerOptions {
  int max_version = TLS1_3_VERSION;
  X509* client_ca = nullptr;  // request and require a client certificate issued by this CA
  std::string alpn_wire;      // protocols the server accepts, in wire format
};

int select_alpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
                const unsigned char* in, unsigned int inlen, void* arg) {
  const auto* wire = static_cast<const std::string*>(arg);
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, reinterpret_cast<const unsigned char*>(wire->data()),
                            static_cast<unsigned>(wire->size()), in,
                            inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// A plain OpenSSL server context (deliberately not ferry's server side).
SslCtxPtr upstream_ctx(const Issued& leaf, const ServerOptions& options) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  REQUIRE(ctx);
  REQUIRE(SSL_CTX_set_max_proto_version(ctx.get(), options.max_version) == 1);
  REQUIRE(SSL_CTX_use_certificate(ctx.get(), leaf.cert.get()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), leaf.key.get()) == 1);
  static const unsigned char kSidCtx[] = "ferry client test";
  REQUIRE(SSL_CTX_set_session_id_context(ctx.get(), kSidCtx, sizeof kSidCtx - 1) == 1);
  if (options.client_ca != nullptr) {
    REQUIRE(X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), options.client_ca) == 1);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  if (!options.alpn_wire.empty()) {
    SSL_CTX_set_alpn_select_cb(ctx.get(), select_alpn,
                               const_cast<std::string*>(&options.alpn_wire));
  }
  return ctx;
}

ServiceConfig client_service(const std::string& server_name, const std::string& ca) {
  ServiceConfig s;
  s.name = "upstream";
  s.mode = ServiceMode::client;
  ferry::Endpoint upstream;
  upstream.tcp = {"localhost", 8443};
  s.connect.backends.push_back(upstream);
  s.pos = {kConfigFile, 5, 1};
  s.cert_pos = {kConfigFile, 9, 8};
  s.key_pos = {kConfigFile, 10, 7};
  s.tls.server_name = server_name;
  s.tls.ca = ca;
  s.tls.ca_pos = {kConfigFile, 11, 6};
  s.tls.verify_pos = {kConfigFile, 12, 10};
  s.tls.alpn_pos = {kConfigFile, 13, 8};
  s.tls.ciphers_pos = {kConfigFile, 14, 11};
  s.tls.ciphersuites_pos = {kConfigFile, 15, 16};
  s.tls.groups_pos = {kConfigFile, 16, 10};
  return s;
}

struct Built {
  std::optional<ClientTlsContext> tls;
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings;
};

Built build(const ServiceConfig& service) {
  Built b;
  b.tls = build_client_tls_context(service, b.errors, b.warnings);
  return b;
}

std::vector<std::string> strs(const std::vector<ConfigError>& list) {
  std::vector<std::string> out;
  for (const auto& e : list) out.push_back(e.str());
  return out;
}

// One upstream connection through an in-memory BIO pair, driven to its end.
struct Handshake {
  SslPtr server;
  SslPtr client;
  bool client_ok = false;
  bool server_ok = false;
  bool client_failed = false;
};

Handshake connect(SSL_CTX* server_ctx, const ServiceConfig& service, const ClientTlsContext& tls) {
  Handshake h{SslPtr(SSL_new(server_ctx)), SslPtr(SSL_new(tls.ctx.get()))};
  REQUIRE(h.server);
  REQUIRE(h.client);
  BIO* server_bio = nullptr;
  BIO* client_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&server_bio, 0, &client_bio, 0) == 1);
  SSL_set_bio(h.server.get(), server_bio, server_bio);
  SSL_set_bio(h.client.get(), client_bio, client_bio);
  SSL_set_accept_state(h.server.get());
  REQUIRE(prepare_client_ssl(h.client.get(), service, tls));

  bool server_failed = false;
  for (int i = 0; i < 50 && !(h.client_ok && h.server_ok); ++i) {
    if (!h.client_ok && !h.client_failed) {
      ERR_clear_error();
      int rc = SSL_do_handshake(h.client.get());
      int e = SSL_get_error(h.client.get(), rc);
      h.client_ok = rc == 1;
      h.client_failed = rc != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
    }
    if (!h.server_ok && !server_failed) {
      ERR_clear_error();
      int rc = SSL_do_handshake(h.server.get());
      int e = SSL_get_error(h.server.get(), rc);
      h.server_ok = rc == 1;
      server_failed = rc != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
    }
    if (h.client_failed || server_failed) break;
  }
  if (h.client_ok && h.server_ok) {
    // TLS 1.3 tickets follow the handshake: a read on the client processes them.
    char byte = 0;
    ERR_clear_error();
    CHECK(SSL_read(h.client.get(), &byte, 1) <= 0);
    CHECK(SSL_get_error(h.client.get(), -1) == SSL_ERROR_WANT_READ);
  }
  ERR_clear_error();
  return h;
}

HandshakeFailure verify_failure(const Handshake& h) {
  return classify_verify_result(SSL_get_verify_result(h.client.get()));
}

std::string subject_cn(X509* cert) {
  char cn[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  return cn;
}

}  // namespace

// --- verification ----------------------------------------------------------------------------

TEST_CASE("client context: a server certificate from the configured CA for the name verifies") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  CHECK(b.warnings.empty());
  REQUIRE(b.tls);

  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  CHECK(h.server_ok);
  CHECK(SSL_get_verify_result(h.client.get()) == X509_V_OK);
  const char* sni = SSL_get_servername(h.server.get(), TLSEXT_NAMETYPE_host_name);
  REQUIRE(sni != nullptr);
  CHECK(std::string(sni) == "localhost");
  CHECK(std::string(SSL_get_version(h.client.get())) == "TLSv1.3");
}

TEST_CASE("client context: server_name defaults to the host of connect") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  const char* sni = SSL_get_servername(h.server.get(), TLSEXT_NAMETYPE_host_name);
  REQUIRE(sni != nullptr);
  CHECK(std::string(sni) == "localhost");
}

TEST_CASE("client context: a certificate for another name fails as hostname_mismatch") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("mail.example.com", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_failed);
  CHECK_FALSE(h.server_ok);
  CHECK(SSL_get_verify_result(h.client.get()) == X509_V_ERR_HOSTNAME_MISMATCH);
  CHECK(verify_failure(h) == HandshakeFailure::hostname_mismatch);
}

TEST_CASE("client context: a partial wildcard does not match") {
  Pki pki;
  CertSpec spec;
  spec.cn = "api.example.com";
  spec.sans = {"DNS:api*.example.com"};
  Issued leaf = pki.issue(spec);
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("api1.example.com", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_failed);
  CHECK(verify_failure(h) == HandshakeFailure::hostname_mismatch);
}

TEST_CASE("client context: a server certificate from another CA fails as unknown_ca") {
  Pki pki;
  Pki other("Other CA");  // another name: an unknown issuer, not a bad signature
  Issued leaf = other.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_failed);
  CHECK(verify_failure(h) == HandshakeFailure::unknown_ca);
}

TEST_CASE("client context: an expired server certificate fails as cert_expired") {
  Pki pki;
  CertSpec spec;
  spec.not_before = std::time(nullptr) - 10 * 86400;
  spec.not_after = std::time(nullptr) - 86400;
  Issued leaf = pki.issue(spec);
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_failed);
  CHECK(SSL_get_verify_result(h.client.get()) == X509_V_ERR_CERT_HAS_EXPIRED);
  CHECK(verify_failure(h) == HandshakeFailure::cert_expired);
}

TEST_CASE("client context: an IP literal is checked against IP SANs and sends no SNI") {
  Pki pki;
  Issued leaf = pki.issue();  // SANs: DNS:localhost, IP:127.0.0.1
  SslCtxPtr server = upstream_ctx(leaf, {});

  ServiceConfig service = client_service("127.0.0.1", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  CHECK(h.server_ok);
  CHECK(SSL_get_servername(h.server.get(), TLSEXT_NAMETYPE_host_name) == nullptr);

  ServiceConfig other_ip = client_service("127.0.0.2", pki.ca_file);
  Built other = build(other_ip);
  REQUIRE(other.tls);
  Handshake mismatch = connect(server.get(), other_ip, *other.tls);
  CHECK(mismatch.client_failed);
  CHECK(SSL_get_verify_result(mismatch.client.get()) == X509_V_ERR_IP_ADDRESS_MISMATCH);
  CHECK(verify_failure(mismatch) == HandshakeFailure::hostname_mismatch);
  CHECK(SSL_get_servername(mismatch.server.get(), TLSEXT_NAMETYPE_host_name) == nullptr);
}

TEST_CASE("client context: an IPv6 literal is checked against IP SANs") {
  Pki pki;
  CertSpec spec;
  spec.sans = {"IP:::1"};
  Issued leaf = pki.issue(spec);
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("::1", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  CHECK(SSL_get_servername(h.server.get(), TLSEXT_NAMETYPE_host_name) == nullptr);
}

TEST_CASE("client context: verify = false connects to anything and warns") {
  Pki pki;
  Pki other("Other CA");  // another name: an unknown issuer, not a bad signature
  CertSpec spec;
  spec.not_after = std::time(nullptr) - 86400;
  spec.not_before = std::time(nullptr) - 2 * 86400;
  Issued leaf = other.issue(spec);  // unknown CA, expired, not for the name
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("mail.example.com", pki.ca_file);
  service.tls.verify = false;
  Built b = build(service);
  REQUIRE(b.tls);
  CHECK(b.errors.empty());
  CHECK(strs(b.warnings) ==
        std::vector<std::string>{"/etc/ferry/ferry.toml:12:10: service[0].verify: certificate "
                                 "verification is off: the upstream server is not authenticated"});
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  CHECK(h.server_ok);
}

TEST_CASE("client context: ca may be a directory of plain PEM files") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  TempDir ca_dir;
  Pki unrelated("Unrelated CA");
  ca_dir.write("unrelated.crt", test::to_pem(unrelated.ca.cert.get()));
  ca_dir.write("our-ca.pem", test::to_pem(pki.ca.cert.get()));
  ca_dir.write("README", "not a certificate");

  ServiceConfig service = client_service("localhost", ca_dir.path().string());
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
}

TEST_CASE("client context: ca may be a hashed directory (openssl rehash layout)") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  TempDir ca_dir;
  char hash[16];
  std::snprintf(hash, sizeof hash, "%08lx.0", X509_subject_name_hash(pki.ca.cert.get()));
  ca_dir.write(hash, test::to_pem(pki.ca.cert.get()));

  ServiceConfig service = client_service("localhost", ca_dir.path().string());
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
}

TEST_CASE("client context: an empty ca is the system trust store, which does not know our CA") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", "");
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_failed);
  CHECK(verify_failure(h) == HandshakeFailure::unknown_ca);
}

TEST_CASE("client context: max_version caps the version offered upstream") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  service.tls.max_version = TLS1_2_VERSION;
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  REQUIRE(h.client_ok);
  CHECK(std::string(SSL_get_version(h.client.get())) == "TLSv1.2");
}

// --- configuration errors --------------------------------------------------------------------

TEST_CASE("client context: a missing ca file is an error at ca") {
  TempDir dir;
  const std::string missing = dir.file("missing.pem");
  Built b = build(client_service("localhost", missing));
  CHECK_FALSE(b.tls);
  CHECK(strs(b.errors) == std::vector<std::string>{"/etc/ferry/ferry.toml:11:6: service[0].ca: "
                                                   "cannot read \"" +
                                                   missing + "\": No such file or directory"});
}

TEST_CASE("client context: a ca file or directory without certificates is an error at ca") {
  TempDir dir;
  const std::string empty = dir.write("empty.pem", "");
  Built b = build(client_service("localhost", empty));
  CHECK_FALSE(b.tls);
  CHECK(strs(b.errors) == std::vector<std::string>{"/etc/ferry/ferry.toml:11:6: service[0].ca: "
                                                   "no certificate found in \"" +
                                                   empty + "\""});

  TempDir empty_dir;
  Built d = build(client_service("localhost", empty_dir.path().string()));
  CHECK_FALSE(d.tls);
  CHECK(strs(d.errors) == std::vector<std::string>{"/etc/ferry/ferry.toml:11:6: service[0].ca: "
                                                   "no certificate found in \"" +
                                                   empty_dir.path().string() + "\""});
}

// The messages are the server side's (core/tls_policy.cpp); here: each key at its position.
TEST_CASE("client context: cipher, suite and group lists that match nothing are errors") {
  Pki pki;
  ServiceConfig service = client_service("localhost", pki.ca_file);
  service.tls.ciphers = "NOPE";
  service.tls.ciphersuites = "TLS_NOPE";
  service.tls.groups = "X25519:nope";
  Built b = build(service);
  CHECK_FALSE(b.tls);
  std::vector<std::string> where;
  for (const auto& e : b.errors) {
    CHECK_FALSE(e.message.empty());
    where.push_back(e.key + " @" + std::to_string(e.pos.line) + ":" + std::to_string(e.pos.column));
  }
  std::sort(where.begin(), where.end());
  CHECK(where == std::vector<std::string>{"service[0].ciphers @14:11",
                                          "service[0].ciphersuites @15:16",
                                          "service[0].groups @16:10"});
}

TEST_CASE("client context: a client key that does not match its certificate is an error") {
  Pki pki;
  Issued client = pki.issue();
  auto other_key = test::make_key(KeyKind::ec_p256);
  ServiceConfig service = client_service("localhost", pki.ca_file);
  service.cert_file = pki.dir.write("client.crt", test::to_pem(client.cert.get()));
  service.key_file = pki.dir.write("client.key", test::to_pem(other_key.get()));
  Built b = build(service);
  CHECK_FALSE(b.tls);
  CHECK(strs(b.errors) == std::vector<std::string>{"/etc/ferry/ferry.toml:10:7: service[0].key: "
                                                   "private key does not match the certificate"});
}

// --- mTLS, ALPN, resumption ------------------------------------------------------------------

TEST_CASE("client context: the client certificate is presented to a server that asks") {
  Pki pki;
  Issued leaf = pki.issue();
  CertSpec client_spec;
  client_spec.cn = "app1";
  client_spec.sans = {"DNS:app1.internal"};
  Issued client = pki.issue(client_spec);
  ServerOptions options;
  options.client_ca = pki.ca.cert.get();
  SslCtxPtr server = upstream_ctx(leaf, options);

  ServiceConfig without = client_service("localhost", pki.ca_file);
  Built plain = build(without);
  REQUIRE(plain.tls);
  Handshake refused = connect(server.get(), without, *plain.tls);
  CHECK_FALSE(refused.server_ok);

  ServiceConfig service = client_service("localhost", pki.ca_file);
  service.cert_file = pki.dir.write("client.crt", test::to_pem(client.cert.get()));
  service.key_file = pki.dir.write("client.key", test::to_pem(client.key.get()));
  Built b = build(service);
  REQUIRE(strs(b.errors).empty());
  CHECK(b.warnings.empty());
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  CHECK(h.client_ok);
  REQUIRE(h.server_ok);
  X509* peer = SSL_get0_peer_certificate(h.server.get());
  REQUIRE(peer != nullptr);
  CHECK(subject_cn(peer) == "app1");
  CHECK(SSL_get_verify_result(h.server.get()) == X509_V_OK);
}

TEST_CASE("client context: ALPN protocols are offered and the server's choice is seen") {
  Pki pki;
  Issued leaf = pki.issue();
  ServerOptions options;
  options.alpn_wire = std::string("\x08http/1.1", 9);  // the server only speaks HTTP/1.1
  SslCtxPtr server = upstream_ctx(leaf, options);
  ServiceConfig service = client_service("localhost", pki.ca_file);
  service.tls.alpn = {"h2", "http/1.1"};
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  REQUIRE(h.client_ok);
  const unsigned char* selected = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(h.client.get(), &selected, &len);
  CHECK(std::string(reinterpret_cast<const char*>(selected), len) == "http/1.1");
}

TEST_CASE("client context: the next connection resumes the cached session (TLS 1.3)") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  CHECK(b.tls->sessions->take_ref() == nullptr);

  Handshake first = connect(server.get(), service, *b.tls);
  REQUIRE(first.client_ok);
  CHECK(std::string(SSL_get_version(first.client.get())) == "TLSv1.3");
  CHECK_FALSE(SSL_session_reused(first.client.get()));
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    Handshake next = connect(server.get(), service, *b.tls);
    REQUIRE(next.client_ok);
    CHECK(SSL_session_reused(next.client.get()) == 1);
    CHECK(SSL_session_reused(next.server.get()) == 1);
  }
}

TEST_CASE("client context: the next connection resumes the cached session (TLS 1.2)") {
  Pki pki;
  Issued leaf = pki.issue();
  ServerOptions options;
  options.max_version = TLS1_2_VERSION;
  SslCtxPtr server = upstream_ctx(leaf, options);
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);

  Handshake first = connect(server.get(), service, *b.tls);
  REQUIRE(first.client_ok);
  CHECK(std::string(SSL_get_version(first.client.get())) == "TLSv1.2");
  CHECK_FALSE(SSL_session_reused(first.client.get()));
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    Handshake next = connect(server.get(), service, *b.tls);
    REQUIRE(next.client_ok);
    CHECK(SSL_session_reused(next.client.get()) == 1);
  }
}

TEST_CASE("client context: the session cache keeps the latest session and outlives the context") {
  Pki pki;
  Issued leaf = pki.issue();
  SslCtxPtr server = upstream_ctx(leaf, {});
  ServiceConfig service = client_service("localhost", pki.ca_file);
  Built b = build(service);
  REQUIRE(b.tls);
  Handshake h = connect(server.get(), service, *b.tls);
  REQUIRE(h.client_ok);
  SSL_SESSION* session = b.tls->sessions->take_ref();
  REQUIRE(session != nullptr);
  CHECK(SSL_SESSION_is_resumable(session) == 1);
  SSL_SESSION_free(session);

  // An upstream SSL still running after a reload dropped the ClientTlsContext: its SSL_CTX
  // keeps the cache alive, and a late ticket lands there safely.
  std::weak_ptr<ClientSessionCache> weak = b.tls->sessions;
  b.tls.reset();
  CHECK_FALSE(weak.expired());
  h.client.reset();
  CHECK(weak.expired());
}

}  // namespace ferry
