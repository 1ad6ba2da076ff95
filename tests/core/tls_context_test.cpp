#include "core/tls_context.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/handshake_failure.h"
#include "tests/core/test_certs.h"

namespace ferry {
namespace {

using test::CertSpec;
using test::KeyKind;
using test::TempDir;

constexpr std::time_t k2024_01_01 = 1704067200;
constexpr std::time_t k2025_01_01 = 1735689600;
constexpr std::time_t k2090_01_01 = 3786912000;

ServiceConfig make_service(const std::string& cert, const std::string& key) {
  ServiceConfig s;
  s.name = "web";
  s.cert_file = cert;
  s.key_file = key;
  s.pos = {"/etc/ferry/ferry.toml", 5, 1};
  s.cert_pos = {"/etc/ferry/ferry.toml", 9, 8};
  s.key_pos = {"/etc/ferry/ferry.toml", 10, 7};
  return s;
}

struct Built {
  std::optional<ServerTlsContext> tls;
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings;
};

Built build(const ServiceConfig& service) {
  Built b;
  b.tls = build_server_tls_context(service, b.errors, b.warnings);
  return b;
}

// Writes a certificate for a fresh key of `kind` (and the key) into `dir`.
ServiceConfig write_pair(const TempDir& dir, KeyKind kind, const CertSpec& spec = {}) {
  auto key = test::make_key(kind);
  auto cert = test::make_cert(spec, key.get());
  return make_service(dir.write("server.crt", test::to_pem(cert.get())),
                      dir.write("server.key", test::to_pem(key.get())));
}

// A whole server context with a P-256 certificate for "localhost".
SslCtxPtr server_ctx(const TempDir& dir) {
  Built b = build(write_pair(dir, KeyKind::ec_p256));
  REQUIRE(b.errors.empty());
  REQUIRE(b.tls);
  return std::move(b.tls->ctx);
}

SslCtxPtr client_ctx() {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(ctx);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  return ctx;
}

// A server SSL and a client SSL connected through an in-memory BIO pair.
struct SslPair {
  SslPtr server;
  SslPtr client;
};

SslPair connect_pair(SSL_CTX* server, SSL_CTX* client) {
  SslPair p{SslPtr(SSL_new(server)), SslPtr(SSL_new(client))};
  REQUIRE(p.server);
  REQUIRE(p.client);
  BIO* server_bio = nullptr;
  BIO* client_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&server_bio, 0, &client_bio, 0) == 1);
  SSL_set_bio(p.server.get(), server_bio, server_bio);
  SSL_set_bio(p.client.get(), client_bio, client_bio);
  SSL_set_accept_state(p.server.get());
  SSL_set_connect_state(p.client.get());
  return p;
}

// A server SSL whose peer is a raw BIO the test writes bytes into.
struct RawPeer {
  SslPtr server;
  BioPtr peer;
};

RawPeer raw_peer(SSL_CTX* server) {
  RawPeer r{SslPtr(SSL_new(server)), nullptr};
  REQUIRE(r.server);
  BIO* server_bio = nullptr;
  BIO* peer_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&server_bio, 0, &peer_bio, 0) == 1);
  SSL_set_bio(r.server.get(), server_bio, server_bio);
  r.peer.reset(peer_bio);
  SSL_set_accept_state(r.server.get());
  return r;
}

struct ServerResult {
  bool done = false;    // handshake completed on the server
  bool failed = false;  // failed with something other than WANT_READ / WANT_WRITE
  HandshakeFailure failure = HandshakeFailure::other;
  std::string reasons;
};

// One SSL_do_handshake on the server, classified the way the connection code does it.
ServerResult step_server(SSL* server) {
  ServerResult r;
  ERR_clear_error();
  int rc = SSL_do_handshake(server);
  if (rc == 1) {
    r.done = true;
    return r;
  }
  int ssl_error = SSL_get_error(server, rc);
  if (ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE) return r;
  unsigned long first = 0;
  r.reasons = drain_openssl_errors(&first);
  r.failed = true;
  r.failure = classify_handshake_failure(ssl_error, first, 0, client_hello_seen(server));
  return r;
}

// Drives both ends until the server finishes or fails (the client may fail first: it then
// stops, and the server sees its alert or nothing more).
ServerResult handshake(SslPair& p) {
  bool client_done = false;
  bool client_failed = false;
  ServerResult s;
  for (int i = 0; i < 50; ++i) {
    if (!client_done && !client_failed) {
      ERR_clear_error();
      int rc = SSL_do_handshake(p.client.get());
      if (rc == 1) {
        client_done = true;
      } else {
        int e = SSL_get_error(p.client.get(), rc);
        client_failed = e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
        ERR_clear_error();
      }
    }
    if (!s.done) s = step_server(p.server.get());
    if (s.failed || (s.done && client_done)) return s;
  }
  return s;
}

// A certificate for `names` (its CN is the first) with a fresh key of `kind`, written as
// STEM.crt / STEM.key, as a [[service.certificates]] entry.
CertificateConfig write_cert(const TempDir& dir, const std::string& stem, KeyKind kind,
                             const std::vector<std::string>& names) {
  CertSpec spec;
  spec.cn = names.front();
  spec.sans.clear();
  for (const auto& n : names) spec.sans.push_back("DNS:" + n);
  auto key = test::make_key(kind);
  auto cert = test::make_cert(spec, key.get());
  CertificateConfig c;
  c.cert_file = dir.write(stem + ".crt", test::to_pem(cert.get()));
  c.key_file = dir.write(stem + ".key", test::to_pem(key.get()));
  c.cert_pos = {"/etc/ferry/ferry.toml", 20, 8};
  c.key_pos = {"/etc/ferry/ferry.toml", 21, 7};
  return c;
}

// A service whose own certificate is for `names`.
ServiceConfig service_for(const TempDir& dir, KeyKind kind, const std::vector<std::string>& names) {
  CertificateConfig c = write_cert(dir, "main", kind, names);
  return make_service(c.cert_file, c.key_file);
}

Built build_ok(const ServiceConfig& service) {
  Built b = build(service);
  std::string errors;
  for (const auto& e : b.errors) errors += e.str() + "\n";
  CAPTURE(errors);
  REQUIRE(b.errors.empty());
  REQUIRE(b.tls);
  return b;
}

// A handshake against `server` from a default client, after `setup` adjusted the client SSL.
template <typename Setup>
ServerResult handshake_with(SSL_CTX* server, SslPair& p, Setup setup) {
  static SslCtxPtr client = [] {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
    return ctx;
  }();
  p = connect_pair(server, client.get());
  setup(p.client.get());
  return handshake(p);
}

// The CN of the certificate the client was shown.
std::string served_cn(SSL* client) {
  X509* peer = SSL_get0_peer_certificate(client);
  if (peer == nullptr) return "(none)";
  char cn[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
  return cn;
}

std::string served_via_sni(SSL_CTX* server, const std::string& name) {
  SslPair p;
  ServerResult r = handshake_with(server, p, [&](SSL* client) {
    if (!name.empty()) SSL_set_tlsext_host_name(client, name.c_str());
  });
  CAPTURE(r.reasons);
  REQUIRE(r.done);
  return served_cn(p.client.get());
}

bool is_tls13(const SSL_CIPHER* c) {
  return std::string(SSL_CIPHER_get_version(c)) == "TLSv1.3";
}

std::vector<std::string> tls12_cipher_names(SSL_CTX* ctx) {
  std::vector<std::string> names;
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx);
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
    if (!is_tls13(c)) names.push_back(SSL_CIPHER_get_name(c));
  }
  return names;
}

}  // namespace

// --- loading certificates and keys ---------------------------------------------------------

TEST_CASE("an EC P-256 certificate and key build a context and report the certificate") {
  TempDir dir;
  CertSpec spec;
  spec.not_after = std::time(nullptr) + 90 * 86400;  // not yet within the 30-day warning
  Built b = build(write_pair(dir, KeyKind::ec_p256, spec));
  REQUIRE(b.errors.empty());
  CHECK(b.warnings.empty());
  REQUIRE(b.tls);
  CHECK(b.tls->ctx);
  CHECK(b.tls->cert.subject == "CN=localhost");
  CHECK(b.tls->cert.key_type == "EC P-256");
  CHECK(b.tls->cert.not_after == spec.not_after);
  CHECK_FALSE(b.tls->cert.expired);
  CHECK(b.tls->cert.sans == std::vector<std::string>{"DNS:localhost", "IP Address:127.0.0.1"});
}

TEST_CASE("an RSA 2048 certificate and key build a context and report the certificate") {
  TempDir dir;
  CertSpec spec;
  spec.org = "Ferry Test";
  Built b = build(write_pair(dir, KeyKind::rsa2048, spec));
  REQUIRE(b.errors.empty());
  REQUIRE(b.tls);
  CHECK(b.tls->cert.subject == "CN=localhost,O=Ferry Test");
  CHECK(b.tls->cert.key_type == "RSA 2048");
  CHECK(b.tls->cert.not_after == spec.not_after);
}

TEST_CASE("P-384 and Ed25519 keys are named") {
  TempDir dir;
  Built p384 = build(write_pair(dir, KeyKind::ec_p384));
  REQUIRE(p384.tls);
  CHECK(p384.tls->cert.key_type == "EC P-384");
  Built ed = build(write_pair(dir, KeyKind::ed25519));
  REQUIRE(ed.tls);
  CHECK(ed.tls->cert.key_type == "Ed25519");
}

TEST_CASE("certificate and key may share one file, in either order") {
  TempDir dir;
  auto key = test::make_key(KeyKind::ec_p256);
  auto cert = test::make_cert({}, key.get());
  std::string both = dir.write("both.pem", test::to_pem(cert.get()) + test::to_pem(key.get()));
  Built b = build(make_service(both, both));
  CHECK(b.errors.empty());
  CHECK(b.tls);

  std::string reversed =
      dir.write("reversed.pem", test::to_pem(key.get()) + test::to_pem(cert.get()));
  Built r = build(make_service(reversed, ""));  // empty key_file: use the cert file
  CHECK(r.errors.empty());
  CHECK(r.tls);
}

TEST_CASE("the certificate file's chain after the leaf is loaded") {
  TempDir dir;
  auto ca_key = test::make_key(KeyKind::ec_p256);
  CertSpec ca_spec;
  ca_spec.cn = "Ferry Test CA";
  ca_spec.sans.clear();
  ca_spec.is_ca = true;
  auto ca = test::make_cert(ca_spec, ca_key.get());
  auto key = test::make_key(KeyKind::ec_p256);
  auto leaf = test::make_cert({}, key.get(), ca.get(), ca_key.get());
  Built b =
      build(make_service(dir.write("chain.crt", test::to_pem(leaf.get()) + test::to_pem(ca.get())),
                         dir.write("leaf.key", test::to_pem(key.get()))));
  REQUIRE(b.errors.empty());
  CHECK(b.warnings.empty());  // in order: no chain warning
  REQUIRE(b.tls);
  CHECK(b.tls->cert.subject == "CN=localhost");
  STACK_OF(X509)* chain = nullptr;
  REQUIRE(SSL_CTX_get0_chain_certs(b.tls->ctx.get(), &chain) == 1);
  REQUIRE(sk_X509_num(chain) == 1);
  CHECK(X509_cmp(sk_X509_value(chain, 0), ca.get()) == 0);
}

TEST_CASE("a missing certificate file is an error at the cert key") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.cert_file = dir.file("missing.crt");
  Built b = build(s);
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].pos.file == "/etc/ferry/ferry.toml");
  CHECK(b.errors[0].pos.line == 9);
  CHECK(b.errors[0].pos.column == 8);
  CHECK(b.errors[0].key == "service[0].cert");
  CHECK(b.errors[0].message ==
        "cannot read \"" + dir.file("missing.crt") + "\": No such file or directory");
}

TEST_CASE("a missing certificate and a missing key are both reported") {
  TempDir dir;
  Built b = build(make_service(dir.file("no.crt"), dir.file("no.key")));
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 2);
  CHECK(b.errors[0].key == "service[0].cert");
  CHECK(b.errors[0].message ==
        "cannot read \"" + dir.file("no.crt") + "\": No such file or directory");
  CHECK(b.errors[1].key == "service[0].key");
  CHECK(b.errors[1].pos.line == 10);
  CHECK(b.errors[1].pos.column == 7);
  CHECK(b.errors[1].message ==
        "cannot read \"" + dir.file("no.key") + "\": No such file or directory");
}

TEST_CASE("an unreadable shared cert/key file is reported once") {
  TempDir dir;
  Built b = build(make_service(dir.file("no.pem"), ""));
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].cert");
}

TEST_CASE("a directory instead of a file cannot be read") {
  TempDir dir;
  Built b = build(make_service(dir.path().string(), dir.path().string()));
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].message == "cannot read \"" + dir.path().string() + "\": Is a directory");
}

TEST_CASE("a file without PEM blocks has no certificate and no key") {
  TempDir dir;
  std::string garbage = dir.write("garbage.pem", "this is not a certificate\n\x01\x02\x03");
  Built b = build(make_service(garbage, garbage));
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 2);
  CHECK(b.errors[0].key == "service[0].cert");
  CHECK(b.errors[0].message == "no certificate found in \"" + garbage + "\"");
  CHECK(b.errors[1].key == "service[0].key");
  CHECK(b.errors[1].message == "no private key found in \"" + garbage + "\"");
}

TEST_CASE("a key file holding only a certificate has no private key") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.key_file = s.cert_file;
  Built b = build(s);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].key");
  CHECK(b.errors[0].message == "no private key found in \"" + s.cert_file + "\"");
}

TEST_CASE("a damaged PEM certificate cannot be parsed") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.cert_file = dir.write("bad.crt",
                          "-----BEGIN CERTIFICATE-----\nMIIB!!!not base64!!!\n"
                          "-----END CERTIFICATE-----\n");
  Built b = build(s);
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].cert");
  CHECK(b.errors[0].message == "cannot parse: bad base64 decode");
  CHECK(ERR_peek_error() == 0);
}

TEST_CASE("an encrypted private key is refused without prompting") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  auto key = test::make_key(KeyKind::ec_p256);
  s.key_file = dir.write("enc.key", test::to_encrypted_pem(key.get(), "secret"));
  Built b = build(s);
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].key");
  CHECK(b.errors[0].message ==
        "private key in \"" + s.key_file + "\" is encrypted; ferry needs it unencrypted");
}

TEST_CASE("a key that does not match the certificate is an error at the key") {
  TempDir dir;
  auto key = test::make_key(KeyKind::ec_p256);
  auto other = test::make_key(KeyKind::ec_p256);
  auto cert = test::make_cert({}, key.get());
  Built b = build(make_service(dir.write("a.crt", test::to_pem(cert.get())),
                               dir.write("b.key", test::to_pem(other.get()))));
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].key");
  CHECK(b.errors[0].pos.line == 10);
  CHECK(b.errors[0].message == "private key does not match the certificate");

  auto rsa = test::make_key(KeyKind::rsa2048);
  Built t = build(make_service(dir.file("a.crt"), dir.write("rsa.key", test::to_pem(rsa.get()))));
  REQUIRE(t.errors.size() == 1);
  CHECK(t.errors[0].message == "private key does not match the certificate");
}

TEST_CASE("a private key readable by other users is an error at the key") {
  using std::filesystem::perms;
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  TempDir::chmod(s.key_file,
                 perms::owner_read | perms::owner_write | perms::group_read | perms::others_read);
  Built b = build(s);
  CHECK_FALSE(b.tls);
  CHECK(b.warnings.empty());
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].key");
  CHECK(b.errors[0].pos.line == 10);
  CHECK(b.errors[0].pos.column == 7);
  CHECK(b.errors[0].message ==
        "private key \"" + s.key_file + "\" is readable by other users (chmod 600 or 640)");
}

TEST_CASE("a group-readable private key is a warning at the key") {
  using std::filesystem::perms;
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  TempDir::chmod(s.key_file, perms::owner_read | perms::group_read);
  Built b = build(s);
  CHECK(b.tls);
  CHECK(b.errors.empty());
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].key == "service[0].key");
  CHECK(b.warnings[0].pos.line == 10);
  CHECK(b.warnings[0].message == "private key \"" + s.key_file + "\" is readable by its group");
}

TEST_CASE("a world-readable certificate is fine, unless it holds the key") {
  using std::filesystem::perms;
  const perms world_readable =
      perms::owner_read | perms::owner_write | perms::group_read | perms::others_read;
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  TempDir::chmod(s.cert_file, world_readable);
  Built b = build(s);
  CHECK(b.tls);
  CHECK(b.errors.empty());
  CHECK(b.warnings.empty());

  auto key = test::make_key(KeyKind::ec_p256);
  auto cert = test::make_cert({}, key.get());
  std::string both = dir.write("both.pem", test::to_pem(cert.get()) + test::to_pem(key.get()));
  TempDir::chmod(both, world_readable);
  Built shared = build(make_service(both, ""));
  CHECK_FALSE(shared.tls);
  REQUIRE(shared.errors.size() == 1);
  CHECK(shared.errors[0].key == "service[0].key");
  CHECK(shared.errors[0].message ==
        "private key \"" + both + "\" is readable by other users (chmod 600 or 640)");
}

TEST_CASE("an expired certificate is a warning and is flagged") {
  TempDir dir;
  CertSpec spec;
  spec.not_before = k2024_01_01;
  spec.not_after = k2025_01_01;
  Built b = build(write_pair(dir, KeyKind::ec_p256, spec));
  CHECK(b.errors.empty());
  REQUIRE(b.tls);
  CHECK(b.tls->cert.expired);
  CHECK(b.tls->cert.not_after == k2025_01_01);
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].key == "service[0].cert");
  CHECK(b.warnings[0].pos.line == 9);
  CHECK(b.warnings[0].message == "certificate expired on 2025-01-01T00:00:00Z");
}

TEST_CASE("a not yet valid certificate is a warning") {
  TempDir dir;
  CertSpec spec;
  spec.not_before = k2090_01_01;
  spec.not_after = k2090_01_01 + 86400;
  Built b = build(write_pair(dir, KeyKind::ec_p256, spec));
  CHECK(b.errors.empty());
  REQUIRE(b.tls);
  CHECK_FALSE(b.tls->cert.expired);
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].message == "certificate is not valid before 2090-01-01T00:00:00Z");
}

TEST_CASE("subject alternative names are listed in order, IPv6 included") {
  TempDir dir;
  CertSpec spec;
  spec.sans = {"DNS:localhost", "DNS:*.example.com", "IP:127.0.0.1", "IP:::1", "IP:2001:db8::42"};
  Built b = build(write_pair(dir, KeyKind::ec_p256, spec));
  REQUIRE(b.tls);
  CHECK(b.tls->cert.sans == std::vector<std::string>{"DNS:localhost", "DNS:*.example.com",
                                                     "IP Address:127.0.0.1", "IP Address:::1",
                                                     "IP Address:2001:db8::42"});
}

TEST_CASE("a certificate without SANs has an empty list") {
  TempDir dir;
  CertSpec spec;
  spec.sans.clear();
  Built b = build(write_pair(dir, KeyKind::ec_p256, spec));
  REQUIRE(b.tls);
  CHECK(b.tls->cert.sans.empty());
}

// --- the policy --------------------------------------------------------------------------

TEST_CASE("the context allows TLS 1.2 and 1.3 only") {
  TempDir dir;
  SslCtxPtr ctx = server_ctx(dir);
  CHECK(SSL_CTX_get_min_proto_version(ctx.get()) == TLS1_2_VERSION);
  CHECK(SSL_CTX_get_max_proto_version(ctx.get()) == TLS1_3_VERSION);
}

TEST_CASE("TLS 1.2 cipher suites are exactly the ECDHE + AEAD ones, in order") {
  TempDir dir;
  SslCtxPtr ctx = server_ctx(dir);
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx.get());
  int tls13 = 0;
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
    CAPTURE(SSL_CIPHER_get_name(c));
    CHECK(SSL_CIPHER_is_aead(c) == 1);
    if (is_tls13(c)) {
      ++tls13;
    } else {
      CHECK(SSL_CIPHER_get_kx_nid(c) == NID_kx_ecdhe);
    }
  }
  CHECK(tls13 >= 2);  // OpenSSL's TLS 1.3 defaults
  CHECK(tls12_cipher_names(ctx.get()) ==
        std::vector<std::string>{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                                 "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                                 "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"});
}

TEST_CASE("server preference, no compression, no renegotiation, tickets and cache on") {
  TempDir dir;
  SslCtxPtr ctx = server_ctx(dir);
  uint64_t options = SSL_CTX_get_options(ctx.get());
  CHECK((options & SSL_OP_CIPHER_SERVER_PREFERENCE) != 0);
  CHECK((options & SSL_OP_NO_COMPRESSION) != 0);
  CHECK((options & SSL_OP_NO_RENEGOTIATION) != 0);
  CHECK((options & SSL_OP_NO_TICKET) == 0);
  CHECK(SSL_CTX_get_session_cache_mode(ctx.get()) == SSL_SESS_CACHE_SERVER);
  CHECK(SSL_CTX_sess_get_cache_size(ctx.get()) == 20480);
  long modes = SSL_CTX_get_mode(ctx.get());
  CHECK((modes & SSL_MODE_ENABLE_PARTIAL_WRITE) != 0);
  CHECK((modes & SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER) != 0);
  CHECK((modes & SSL_MODE_RELEASE_BUFFERS) != 0);
  CHECK(SSL_CTX_get_read_ahead(ctx.get()) == 1);
}

TEST_CASE("the ClientHello marker index is registered once") {
  int index = client_hello_seen_index();
  CHECK(index >= 0);
  CHECK(client_hello_seen_index() == index);
}

// --- real handshakes over an in-memory BIO pair -------------------------------------------

TEST_CASE("a TLS 1.3 client completes the handshake") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  SslCtxPtr client = client_ctx();
  SslPair p = connect_pair(server.get(), client.get());
  CHECK_FALSE(client_hello_seen(p.server.get()));
  ServerResult r = handshake(p);
  CAPTURE(r.reasons);
  REQUIRE(r.done);
  CHECK(SSL_version(p.server.get()) == TLS1_3_VERSION);
  CHECK(client_hello_seen(p.server.get()));
}

TEST_CASE("a TLS 1.2 client gets the server's preferred ECDHE AEAD suite") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  SslCtxPtr client = client_ctx();
  SSL_CTX_set_max_proto_version(client.get(), TLS1_2_VERSION);
  // The client prefers AES-256; the server's order wins.
  REQUIRE(SSL_CTX_set_cipher_list(
              client.get(), "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") == 1);
  SslPair p = connect_pair(server.get(), client.get());
  ServerResult r = handshake(p);
  CAPTURE(r.reasons);
  REQUIRE(r.done);
  CHECK(SSL_version(p.server.get()) == TLS1_2_VERSION);
  CHECK(std::string(SSL_CIPHER_standard_name(SSL_get_current_cipher(p.server.get()))) ==
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
}

TEST_CASE("sessions resume with tickets, TLS 1.2 and TLS 1.3") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx();
    SSL_CTX_set_max_proto_version(client.get(), version);
    SslPair first = connect_pair(server.get(), client.get());
    REQUIRE(handshake(first).done);
    // TLS 1.3 tickets arrive after the handshake: let the client read them.
    char byte;
    ERR_clear_error();
    CHECK(SSL_read(first.client.get(), &byte, 1) <= 0);
    ERR_clear_error();
    SSL_SESSION* session = SSL_get1_session(first.client.get());
    REQUIRE(session != nullptr);
    CHECK(SSL_SESSION_is_resumable(session) == 1);

    SslPair second = connect_pair(server.get(), client.get());
    SSL_set_session(second.client.get(), session);
    SSL_SESSION_free(session);
    REQUIRE(handshake(second).done);
    CHECK(SSL_session_reused(second.server.get()) == 1);
  }
}

TEST_CASE("a TLS 1.0/1.1 client fails with protocol_version") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  SslCtxPtr client = client_ctx();
  SSL_CTX_set_security_level(client.get(), 0);
  REQUIRE(SSL_CTX_set_cipher_list(client.get(), "DEFAULT:@SECLEVEL=0") == 1);
  SSL_CTX_set_min_proto_version(client.get(), TLS1_VERSION);
  SSL_CTX_set_max_proto_version(client.get(), TLS1_1_VERSION);
  SslPair p = connect_pair(server.get(), client.get());
  ServerResult r = handshake(p);
  CAPTURE(r.reasons);
  REQUIRE(r.failed);
  CHECK(r.failure == HandshakeFailure::protocol_version);
}

TEST_CASE("a client offering only non-ECDHE suites fails with no_shared_cipher") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  SslCtxPtr client = client_ctx();
  SSL_CTX_set_max_proto_version(client.get(), TLS1_2_VERSION);
  REQUIRE(SSL_CTX_set_cipher_list(client.get(), "AES128-SHA") == 1);
  SslPair p = connect_pair(server.get(), client.get());
  ServerResult r = handshake(p);
  CAPTURE(r.reasons);
  REQUIRE(r.failed);
  CHECK(r.failure == HandshakeFailure::no_shared_cipher);
  CHECK(client_hello_seen(p.server.get()));
}

TEST_CASE("an HTTP request instead of a ClientHello is not_tls") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  RawPeer r = raw_peer(server.get());
  const std::string request = "GET / HTTP/1.1\r\n\r\n";
  REQUIRE(BIO_write(r.peer.get(), request.data(), static_cast<int>(request.size())) ==
          static_cast<int>(request.size()));
  ServerResult s = step_server(r.server.get());
  CAPTURE(s.reasons);
  REQUIRE(s.failed);
  CHECK(s.failure == HandshakeFailure::not_tls);
  CHECK(s.reasons == "http request");
}

TEST_CASE("random bytes instead of a ClientHello are not_tls") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  RawPeer r = raw_peer(server.get());
  std::mt19937 rng(20261122);
  std::vector<unsigned char> bytes(1024);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng() & 0xff);
  REQUIRE(bytes[0] != 0x16);
  REQUIRE(BIO_write(r.peer.get(), bytes.data(), static_cast<int>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  ServerResult s = step_server(r.server.get());
  CAPTURE(s.reasons);
  REQUIRE(s.failed);
  CHECK(s.failure == HandshakeFailure::not_tls);
  CHECK_FALSE(client_hello_seen(r.server.get()));
}

TEST_CASE("EOF in the middle of a ClientHello is peer_closed") {
  TempDir dir;
  SslCtxPtr server = server_ctx(dir);
  SslCtxPtr client_context = client_ctx();

  // Capture a real ClientHello from a client whose peer never answers.
  SslPtr client(SSL_new(client_context.get()));
  REQUIRE(client);
  BIO* client_bio = nullptr;
  BIO* capture_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&client_bio, 0, &capture_bio, 0) == 1);
  BioPtr capture(capture_bio);
  SSL_set_bio(client.get(), client_bio, client_bio);
  SSL_set_connect_state(client.get());
  ERR_clear_error();
  REQUIRE(SSL_do_handshake(client.get()) == -1);
  std::vector<char> hello(16384);
  int n = BIO_read(capture.get(), hello.data(), static_cast<int>(hello.size()));
  REQUIRE(n > 100);

  RawPeer r = raw_peer(server.get());
  REQUIRE(BIO_write(r.peer.get(), hello.data(), n / 2) == n / 2);
  ServerResult s = step_server(r.server.get());
  REQUIRE_FALSE(s.failed);  // waiting for the rest
  REQUIRE(BIO_shutdown_wr(r.peer.get()) == 1);
  s = step_server(r.server.get());
  CAPTURE(s.reasons);
  REQUIRE(s.failed);
  CHECK(s.failure == HandshakeFailure::peer_closed);
}

// --- service.tls: versions, ciphers, groups ----------------------------------------------

TEST_CASE("a TLS 1.3-only service refuses a TLS 1.2 client with protocol_version") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.min_version = TLS1_3_VERSION;
  Built b = build_ok(s);
  CHECK(SSL_CTX_get_min_proto_version(b.tls->ctx.get()) == TLS1_3_VERSION);
  SslPair p;
  ServerResult r = handshake_with(
      b.tls->ctx.get(), p, [](SSL* client) { SSL_set_max_proto_version(client, TLS1_2_VERSION); });
  CAPTURE(r.reasons);
  REQUIRE(r.failed);
  CHECK(r.failure == HandshakeFailure::protocol_version);
}

TEST_CASE("a TLS 1.2-only service negotiates TLS 1.2 with a TLS 1.3 client") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.max_version = TLS1_2_VERSION;
  Built b = build_ok(s);
  SslPair p;
  ServerResult r = handshake_with(b.tls->ctx.get(), p, [](SSL*) {});
  REQUIRE(r.done);
  CHECK(SSL_version(p.server.get()) == TLS1_2_VERSION);
}

TEST_CASE("ciphers replaces the TLS 1.2 list") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384";
  Built b = build_ok(s);
  CHECK(b.warnings.empty());
  CHECK(tls12_cipher_names(b.tls->ctx.get()) ==
        std::vector<std::string>{"ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"});
  SslPair p;
  ServerResult r = handshake_with(
      b.tls->ctx.get(), p, [](SSL* client) { SSL_set_max_proto_version(client, TLS1_2_VERSION); });
  REQUIRE(r.done);
  CHECK(std::string(SSL_get_cipher_name(p.server.get())) == "ECDHE-ECDSA-CHACHA20-POLY1305");
}

TEST_CASE("ciphers matching nothing usable is an error at the ciphers key") {
  TempDir dir;
  for (const char* ciphers : {"NOTHING-AT-ALL", "ECDHE-RSA-AES128-GCM-SHA256", "PSK"}) {
    CAPTURE(ciphers);
    ServiceConfig s = write_pair(dir, KeyKind::ec_p256);  // no RSA certificate
    s.tls.ciphers = ciphers;
    s.tls.ciphers_pos = {"/etc/ferry/ferry.toml", 12, 11};
    Built b = build(s);
    CHECK_FALSE(b.tls);
    REQUIRE(b.errors.size() == 1);
    CHECK(b.errors[0].str() ==
          "/etc/ferry/ferry.toml:12:11: service[0].ciphers: matches no usable cipher");
    CHECK(ERR_peek_error() == 0);
  }
}

TEST_CASE("ciphers admitting suites without forward secrecy or AEAD is a warning") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::rsa2048);
  s.tls.ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256:AES128-SHA";
  s.tls.ciphers_pos = {"/etc/ferry/ferry.toml", 12, 11};
  Built b = build_ok(s);
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].str() ==
        "/etc/ferry/ferry.toml:12:11: service[0].ciphers: admits suites that are weak: "
        "ECDHE-RSA-AES128-SHA (not AEAD), AES128-GCM-SHA256 (no forward secrecy), "
        "AES128-SHA (no forward secrecy, not AEAD)");
}

TEST_CASE("ciphersuites replaces the TLS 1.3 list; unknown names are errors") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
  Built b = build_ok(s);
  SslPair p;
  REQUIRE(handshake_with(b.tls->ctx.get(), p, [](SSL*) {}).done);
  CHECK(std::string(SSL_get_cipher_name(p.server.get())) == "TLS_CHACHA20_POLY1305_SHA256");

  s.tls.ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_FOO";
  s.tls.ciphersuites_pos = {"/etc/ferry/ferry.toml", 13, 16};
  Built bad = build(s);
  CHECK_FALSE(bad.tls);
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].str() ==
        "/etc/ferry/ferry.toml:13:16: service[0].ciphersuites: unknown TLS 1.3 cipher suite "
        "\"TLS_FOO\"");
}

TEST_CASE("groups are applied; an unknown group is an error") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.groups = "P-384";
  Built b = build_ok(s);
  SslPair p;
  REQUIRE(handshake_with(b.tls->ctx.get(), p, [](SSL*) {}).done);
  CHECK(SSL_get_negotiated_group(p.server.get()) == NID_secp384r1);

  s.tls.groups = "X25519:P-999";
  s.tls.groups_pos = {"/etc/ferry/ferry.toml", 14, 10};
  Built bad = build(s);
  CHECK_FALSE(bad.tls);
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].str() ==
        "/etc/ferry/ferry.toml:14:10: service[0].groups: unknown group \"P-999\"");
  CHECK(ERR_peek_error() == 0);
}

// --- ALPN ---------------------------------------------------------------------------------

std::string client_alpn(const std::vector<std::string>& protocols) {
  std::string wire;
  for (const auto& p : protocols) wire += static_cast<char>(p.size()) + p;
  return wire;
}

std::string negotiated_alpn(SSL* ssl) {
  const unsigned char* data = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl, &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

TEST_CASE("ALPN: the server's preference wins") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.alpn = {"h2", "http/1.1"};
  Built b = build_ok(s);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslPair p;
    ServerResult r = handshake_with(b.tls->ctx.get(), p, [&](SSL* client) {
      SSL_set_max_proto_version(client, version);
      std::string offer = client_alpn({"http/1.1", "h2"});
      SSL_set_alpn_protos(client, reinterpret_cast<const unsigned char*>(offer.data()),
                          static_cast<unsigned>(offer.size()));
    });
    REQUIRE(r.done);
    CHECK(negotiated_alpn(p.server.get()) == "h2");
    CHECK(negotiated_alpn(p.client.get()) == "h2");
  }
}

TEST_CASE("ALPN: a client without ALPN is served without") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.alpn = {"h2"};
  Built b = build_ok(s);
  SslPair p;
  REQUIRE(handshake_with(b.tls->ctx.get(), p, [](SSL*) {}).done);
  CHECK(negotiated_alpn(p.server.get()).empty());
}

TEST_CASE("ALPN: no protocol in common fails with no_application_protocol") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  s.tls.alpn = {"h2", "http/1.1"};
  Built b = build_ok(s);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslPair p;
    ServerResult r = handshake_with(b.tls->ctx.get(), p, [&](SSL* client) {
      SSL_set_max_proto_version(client, version);
      std::string offer = client_alpn({"spdy/3", "imap"});
      SSL_set_alpn_protos(client, reinterpret_cast<const unsigned char*>(offer.data()),
                          static_cast<unsigned>(offer.size()));
    });
    CAPTURE(r.reasons);
    REQUIRE(r.failed);
    CHECK(r.failure == HandshakeFailure::no_application_protocol);
  }
}

// --- SNI ----------------------------------------------------------------------------------

TEST_CASE("SNI: three names, three certificates; an unknown name gets the default") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"one.test"});
  s.tls.certificates = {write_cert(dir, "two", KeyKind::ec_p256, {"two.test", "deux.test"}),
                        write_cert(dir, "three", KeyKind::rsa2048, {"three.test"})};
  Built b = build_ok(s);
  CHECK(b.warnings.empty());
  REQUIRE(b.tls->extra_certs.size() == 2);
  CHECK(b.tls->extra_certs[0].subject == "CN=two.test");
  CHECK(b.tls->extra_certs[1].key_type == "RSA 2048");
  SSL_CTX* ctx = b.tls->ctx.get();
  for (int round = 0; round < 2; ++round) {
    CHECK(served_via_sni(ctx, "one.test") == "one.test");
    CHECK(served_via_sni(ctx, "two.test") == "two.test");
    CHECK(served_via_sni(ctx, "deux.test") == "two.test");
    CHECK(served_via_sni(ctx, "THREE.Test") == "three.test");
    CHECK(served_via_sni(ctx, "four.test") == "one.test");
    CHECK(served_via_sni(ctx, "") == "one.test");
  }
}

TEST_CASE("SNI: a wildcard covers exactly one label; exact names come first") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  s.tls.certificates = {write_cert(dir, "wild", KeyKind::ec_p256, {"*.example.test"}),
                        write_cert(dir, "api", KeyKind::ec_p256, {"api.example.test"})};
  Built b = build_ok(s);
  SSL_CTX* ctx = b.tls->ctx.get();
  CHECK(served_via_sni(ctx, "www.example.test") == "*.example.test");
  CHECK(served_via_sni(ctx, "api.example.test") == "api.example.test");
  CHECK(served_via_sni(ctx, "a.b.example.test") == "default.test");
  CHECK(served_via_sni(ctx, "example.test") == "default.test");
}

TEST_CASE("SNI: a certificate without DNS SANs is chosen by its CN") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  auto key = test::make_key(KeyKind::ec_p256);
  CertSpec spec;
  spec.cn = "legacy.test";
  spec.sans.clear();
  auto cert = test::make_cert(spec, key.get());
  CertificateConfig c;
  c.cert_file = dir.write("legacy.crt", test::to_pem(cert.get()));
  c.key_file = dir.write("legacy.key", test::to_pem(key.get()));
  s.tls.certificates = {c};
  Built b = build_ok(s);
  CHECK(served_via_sni(b.tls->ctx.get(), "legacy.test") == "legacy.test");
}

int served_key_type(SSL_CTX* server, const std::string& name, const char* sigalgs, int version) {
  SslPair p;
  ServerResult r = handshake_with(server, p, [&](SSL* client) {
    SSL_set_max_proto_version(client, version);
    SSL_set_tlsext_host_name(client, name.c_str());
    REQUIRE(SSL_set1_sigalgs_list(client, sigalgs) == 1);
  });
  CAPTURE(r.reasons);
  REQUIRE(r.done);
  X509* peer = SSL_get0_peer_certificate(p.client.get());
  REQUIRE(peer != nullptr);
  return EVP_PKEY_get_base_id(X509_get0_pubkey(peer));
}

TEST_CASE(
    "SNI: an ECDSA and an RSA certificate for the same names, picked by signature algorithms") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  s.tls.certificates = {write_cert(dir, "dual-rsa", KeyKind::rsa2048, {"dual.test"}),
                        write_cert(dir, "dual-ec", KeyKind::ec_p256, {"dual.test"})};
  Built b = build_ok(s);
  CHECK(b.tls->sni_contexts.size() == 1);  // one context holds both
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    CHECK(served_key_type(b.tls->ctx.get(), "dual.test", "ECDSA+SHA256", version) == EVP_PKEY_EC);
    CHECK(served_key_type(b.tls->ctx.get(), "dual.test", "rsa_pss_rsae_sha256:RSA+SHA256",
                          version) == EVP_PKEY_RSA);
  }
}

TEST_CASE("the service's own certificate can have a second key type for the same names") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::rsa2048, {"localhost"});
  s.tls.certificates = {write_cert(dir, "ec", KeyKind::ec_p256, {"localhost"})};
  Built b = build_ok(s);
  CHECK_FALSE(b.tls->sni);
  CHECK(served_key_type(b.tls->ctx.get(), "localhost", "ECDSA+SHA256", TLS1_3_VERSION) ==
        EVP_PKEY_EC);
  CHECK(served_key_type(b.tls->ctx.get(), "other", "rsa_pss_rsae_sha256", TLS1_3_VERSION) ==
        EVP_PKEY_RSA);
}

TEST_CASE("two certificates of one key type for the same names are an error") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  s.tls.certificates = {write_cert(dir, "a", KeyKind::ec_p256, {"a.test"}),
                        write_cert(dir, "b", KeyKind::ec_p384, {"a.test"})};
  Built b = build(s);
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 1);
  CHECK(b.errors[0].key == "service[0].certificates[1].cert");
  CHECK(b.errors[0].message ==
        "same names and key type (EC) as service[0].certificates[0].cert: one would replace "
        "the other");
}

TEST_CASE("problems of an extra certificate are reported at its entry") {
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  CertificateConfig good = write_cert(dir, "good", KeyKind::ec_p256, {"good.test"});
  CertificateConfig missing = good;
  missing.cert_file = dir.file("missing.crt");
  CertificateConfig mismatched = write_cert(dir, "mis", KeyKind::ec_p256, {"mis.test"});
  mismatched.key_file = good.key_file;
  s.tls.certificates = {good, missing, mismatched};
  Built b = build(s);
  CHECK_FALSE(b.tls);
  REQUIRE(b.errors.size() == 2);
  CHECK(b.errors[0].str() ==
        "/etc/ferry/ferry.toml:20:8: service[0].certificates[1].cert: "
        "cannot read \"" +
            missing.cert_file + "\": No such file or directory");
  CHECK(b.errors[1].str() ==
        "/etc/ferry/ferry.toml:21:7: service[0].certificates[2].key: "
        "private key does not match the certificate");
}

// --- record padding -----------------------------------------------------------------------

// Lengths of the TLS 1.3 application-data records in `bytes` (every encrypted record).
std::vector<size_t> encrypted_record_lengths(const std::string& bytes) {
  std::vector<size_t> out;
  size_t pos = 0;
  while (pos + 5 <= bytes.size()) {
    const auto* h = reinterpret_cast<const unsigned char*>(bytes.data() + pos);
    const size_t len = (size_t{h[3]} << 8) | h[4];
    if (h[0] == 23) out.push_back(len);
    pos += 5 + len;
  }
  return out;
}

// What the server sends for `payload` after the handshake, as raw records.
std::string records_for(SSL_CTX* server, const std::string& payload) {
  SslPair p;
  REQUIRE(handshake_with(server, p, [](SSL*) {}).done);
  // Whatever the client has not read yet (tickets) is part of the stream too.
  BIO* wire = SSL_get_rbio(p.client.get());
  std::string bytes(65536, '\0');
  REQUIRE(SSL_write(p.server.get(), payload.data(), static_cast<int>(payload.size())) ==
          static_cast<int>(payload.size()));
  int n = BIO_read(wire, bytes.data(), static_cast<int>(bytes.size()));
  REQUIRE(n > 0);
  bytes.resize(static_cast<size_t>(n));
  return bytes;
}

TEST_CASE("record_padding pads every TLS 1.3 record to a multiple of N") {
  TempDir dir;
  ServiceConfig s = write_pair(dir, KeyKind::ec_p256);
  constexpr size_t kTag = 16;  // AEAD tag after the padded inner plaintext
  for (size_t payload : {size_t{1}, size_t{5}, size_t{100}, size_t{1000}}) {
    CAPTURE(payload);
    s.tls.record_padding = 256;
    Built padded = build_ok(s);
    std::vector<size_t> lengths =
        encrypted_record_lengths(records_for(padded.tls->ctx.get(), std::string(payload, 'x')));
    REQUIRE_FALSE(lengths.empty());
    for (size_t len : lengths) {
      CAPTURE(len);
      CHECK((len - kTag) % 256 == 0);
    }
    CHECK(lengths.back() == ((payload + 1 + 255) / 256) * 256 + kTag);

    s.tls.record_padding = 0;
    Built plain = build_ok(s);
    lengths =
        encrypted_record_lengths(records_for(plain.tls->ctx.get(), std::string(payload, 'x')));
    REQUIRE_FALSE(lengths.empty());
    CHECK(lengths.back() == payload + 1 + kTag);
  }
}

// --- --check warnings ---------------------------------------------------------------------

TEST_CASE("a certificate expiring within 30 days is a warning") {
  TempDir dir;
  CertSpec spec;
  spec.not_after = std::time(nullptr) + 10 * 86400 + 3600;
  Built b = build_ok(write_pair(dir, KeyKind::ec_p256, spec));
  CHECK_FALSE(b.tls->cert.expired);
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].str() ==
        "/etc/ferry/ferry.toml:9:8: service[0].cert: certificate "
        "expires in 10 days");
}

TEST_CASE("an expired certificate is listed before the service's other warnings") {
  using std::filesystem::perms;
  TempDir dir;
  ServiceConfig s = service_for(dir, KeyKind::ec_p256, {"default.test"});
  TempDir::chmod(s.key_file, perms::owner_read | perms::group_read);
  CertificateConfig soon = write_cert(dir, "soon", KeyKind::ec_p256, {"soon.test"});
  {
    auto key = test::make_key(KeyKind::ec_p256);
    CertSpec spec;
    spec.cn = "old.test";
    spec.sans = {"DNS:old.test"};
    spec.not_before = k2024_01_01;
    spec.not_after = k2025_01_01;
    auto cert = test::make_cert(spec, key.get());
    soon.cert_file = dir.write("old.crt", test::to_pem(cert.get()));
    soon.key_file = dir.write("old.key", test::to_pem(key.get()));
  }
  s.tls.certificates = {soon};
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings(1);  // one from an earlier service
  warnings[0].key = "earlier";
  auto tls = build_server_tls_context(s, errors, warnings);
  REQUIRE(tls);
  REQUIRE(warnings.size() == 3);
  CHECK(warnings[0].key == "earlier");
  CHECK(warnings[1].str() ==
        "/etc/ferry/ferry.toml:20:8: service[0].certificates[0].cert: "
        "certificate expired on 2025-01-01T00:00:00Z");
  CHECK(warnings[2].key == "service[0].key");
  CHECK(tls->extra_certs.at(0).expired);
}

TEST_CASE("a chain out of order or not leading to the certificate is a warning") {
  TempDir dir;
  auto root_key = test::make_key(KeyKind::ec_p256);
  CertSpec root_spec;
  root_spec.cn = "Root";
  root_spec.sans.clear();
  root_spec.is_ca = true;
  auto root = test::make_cert(root_spec, root_key.get());
  auto mid_key = test::make_key(KeyKind::ec_p256);
  CertSpec mid_spec = root_spec;
  mid_spec.cn = "Intermediate";
  auto mid = test::make_cert(mid_spec, mid_key.get(), root.get(), root_key.get());
  auto key = test::make_key(KeyKind::ec_p256);
  auto leaf = test::make_cert({}, key.get(), mid.get(), mid_key.get());
  std::string key_file = dir.write("leaf.key", test::to_pem(key.get()));

  Built good = build_ok(make_service(
      dir.write("good.crt",
                test::to_pem(leaf.get()) + test::to_pem(mid.get()) + test::to_pem(root.get())),
      key_file));
  CHECK(good.warnings.empty());

  std::string reversed =
      dir.write("reversed.crt",
                test::to_pem(leaf.get()) + test::to_pem(root.get()) + test::to_pem(mid.get()));
  Built b = build_ok(make_service(reversed, key_file));
  REQUIRE(b.warnings.size() == 1);
  CHECK(b.warnings[0].str() == "/etc/ferry/ferry.toml:9:8: service[0].cert: chain in \"" +
                                   reversed +
                                   "\" is out of order or does not lead to its certificate: "
                                   "certificate 2 (CN=Root) did not issue certificate 1 "
                                   "(CN=localhost)");

  std::string unrelated =
      dir.write("unrelated.crt",
                test::to_pem(leaf.get()) + test::to_pem(mid.get()) + test::to_pem(mid.get()));
  Built u = build_ok(make_service(unrelated, key_file));
  REQUIRE(u.warnings.size() == 1);
  CHECK(u.warnings[0].message.ends_with(
      "certificate 3 (CN=Intermediate) did not issue certificate 2 (CN=Intermediate)"));
}

}  // namespace ferry
