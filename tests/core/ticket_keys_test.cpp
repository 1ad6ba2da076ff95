#include "core/ticket_keys.h"

#include <doctest/doctest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "core/openssl_ptr.h"
#include "tests/core/test_certs.h"

namespace ferry {
namespace {

using test::CertSpec;
using test::KeyKind;
using test::TempDir;
using namespace std::chrono_literals;

const SourcePos kKeyFilePos{"/etc/ferry/ferry.toml", 14, 19};

// 160 hex digits: a 16-byte name of `name_byte`s, then 64 random bytes.
std::string hex_key(unsigned char name_byte) {
  static const char* digits = "0123456789abcdef";
  unsigned char bytes[80];
  std::fill(bytes, bytes + 16, name_byte);
  REQUIRE(RAND_bytes(bytes + 16, 64) == 1);
  std::string hex;
  for (unsigned char b : bytes) {
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  return hex;
}

std::array<unsigned char, 16> name_of(unsigned char name_byte) {
  std::array<unsigned char, 16> name{};
  name.fill(name_byte);
  return name;
}

ServiceConfig make_service(const std::string& name = "web") {
  ServiceConfig s;
  s.index = 1;
  s.name = name;
  s.pos = {"/etc/ferry/ferry.toml", 10, 1};
  s.tls.ticket_key_file_pos = kKeyFilePos;
  return s;
}

ServiceConfig with_key_file(const TempDir& dir, const std::string& file,
                            const std::string& content) {
  ServiceConfig s = make_service();
  s.tls.ticket_key_file = dir.write(file, content);
  return s;
}

// A server context of our own with a certificate, no session cache (so only tickets resume)
// and session tickets configured for `service`.
SslCtxPtr server_ctx(const ServiceConfig& service) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  REQUIRE(ctx);
  auto key = test::make_key(KeyKind::ec_p256);
  auto cert = test::make_cert(CertSpec{}, key.get());
  REQUIRE(SSL_CTX_use_certificate(ctx.get(), cert.get()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), key.get()) == 1);
  static const unsigned char kSidCtx[] = "ferry-test";
  REQUIRE(SSL_CTX_set_session_id_context(ctx.get(), kSidCtx, sizeof kSidCtx - 1) == 1);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  std::vector<ConfigError> errors, warnings;
  bool ok = configure_session_tickets(ctx.get(), service, errors, warnings);
  for (const auto& e : errors) CAPTURE(e.str());
  REQUIRE(errors.empty());
  REQUIRE(ok);
  CHECK(warnings.empty());
  return ctx;
}

SslCtxPtr client_ctx(int version) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(ctx);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_max_proto_version(ctx.get(), version);
  return ctx;
}

struct Handshake {
  bool done = false;
  bool resumed = false;
  SslPtr server;
  SslPtr client;
};

// A handshake over an in-memory BIO pair; the client then reads the TLS 1.3 tickets.
Handshake handshake(SSL_CTX* server_ctx, SSL_CTX* client_ctx, SSL_SESSION* session = nullptr) {
  Handshake h{false, false, SslPtr(SSL_new(server_ctx)), SslPtr(SSL_new(client_ctx))};
  REQUIRE(h.server);
  REQUIRE(h.client);
  BIO* server_bio = nullptr;
  BIO* client_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&server_bio, 0, &client_bio, 0) == 1);
  SSL_set_bio(h.server.get(), server_bio, server_bio);
  SSL_set_bio(h.client.get(), client_bio, client_bio);
  SSL_set_accept_state(h.server.get());
  SSL_set_connect_state(h.client.get());
  if (session != nullptr) REQUIRE(SSL_set_session(h.client.get(), session) == 1);
  bool server_done = false;
  bool client_done = false;
  for (int i = 0; i < 50 && !(server_done && client_done); ++i) {
    ERR_clear_error();
    if (!client_done) client_done = SSL_do_handshake(h.client.get()) == 1;
    if (!server_done) server_done = SSL_do_handshake(h.server.get()) == 1;
  }
  ERR_clear_error();
  h.done = server_done && client_done;
  if (h.done) {
    char byte;
    SSL_read(h.client.get(), &byte, 1);
    ERR_clear_error();
    h.resumed = SSL_session_reused(h.server.get()) == 1;
  }
  return h;
}

// The client's session after a handshake, with the ticket it holds.
struct Session {
  SSL_SESSION* session = nullptr;
  ~Session() { SSL_SESSION_free(session); }
  std::array<unsigned char, 16> ticket_name() const {
    const unsigned char* ticket = nullptr;
    size_t len = 0;
    SSL_SESSION_get0_ticket(session, &ticket, &len);
    std::array<unsigned char, 16> name{};
    REQUIRE(len > name.size());
    std::copy(ticket, ticket + name.size(), name.begin());
    return name;
  }
};

Session session_of(const Handshake& h) {
  Session s{SSL_get1_session(h.client.get())};
  REQUIRE(s.session != nullptr);
  return s;
}

std::vector<std::string> configure_errors(const ServiceConfig& service) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  REQUIRE(ctx);
  std::vector<ConfigError> errors, warnings;
  bool ok = configure_session_tickets(ctx.get(), service, errors, warnings);
  CHECK(ok == errors.empty());
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.str());
  return out;
}

const std::string kAt = "/etc/ferry/ferry.toml:14:19: service[1].ticket_key_file: ";

}  // namespace

// --- ticket_key_file ----------------------------------------------------------------------

TEST_CASE("ticket keys: a session from one server resumes on another with the same key file") {
  TempDir dir;
  const std::string keys = hex_key(1) + "\n" + hex_key(2) + "\n";
  SslCtxPtr a = server_ctx(with_key_file(dir, "a.key", keys));
  SslCtxPtr b = server_ctx(with_key_file(dir, "b.key", keys));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake first = handshake(a.get(), client.get());
    REQUIRE(first.done);
    CHECK_FALSE(first.resumed);
    Session s = session_of(first);
    REQUIRE(SSL_SESSION_has_ticket(s.session) == 1);
    CHECK(s.ticket_name() == name_of(1));  // the first line encrypts
    Handshake second = handshake(b.get(), client.get(), s.session);
    REQUIRE(second.done);
    CHECK(second.resumed);
  }
}

TEST_CASE("ticket keys: a key on a later line still decrypts and the ticket is renewed") {
  TempDir dir;
  SslCtxPtr old_server = server_ctx(with_key_file(dir, "old.key", hex_key(1) + "\n"));
  const std::string k1 = hex_key(1);
  SslCtxPtr a = server_ctx(with_key_file(dir, "a.key", k1 + "\n"));
  SslCtxPtr b = server_ctx(with_key_file(dir, "b.key", hex_key(2) + "\n" + k1 + "\n"));
  SslCtxPtr same = server_ctx(with_key_file(dir, "same.key", k1 + "\n"));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake first = handshake(a.get(), client.get());
    REQUIRE(first.done);
    Session s = session_of(first);
    CHECK(s.ticket_name() == name_of(1));

    // The current key decrypts: resumed; TLS 1.2 keeps the ticket it has.
    Handshake current = handshake(same.get(), client.get(), s.session);
    REQUIRE(current.done);
    CHECK(current.resumed);
    if (version == TLS1_2_VERSION) {
      CHECK(session_of(current).ticket_name() == name_of(1));
    }

    // The second line's key decrypts too, and the client gets a ticket under the first.
    Handshake renewed = handshake(b.get(), client.get(), s.session);
    REQUIRE(renewed.done);
    CHECK(renewed.resumed);
    CHECK(session_of(renewed).ticket_name() == name_of(2));

    // Same name, different secret: the ticket does not authenticate, a full handshake follows.
    Handshake forged = handshake(old_server.get(), client.get(), s.session);
    REQUIRE(forged.done);
    CHECK_FALSE(forged.resumed);
  }
}

TEST_CASE("ticket keys: a ticket under an unknown key falls back to a full handshake") {
  TempDir dir;
  SslCtxPtr a = server_ctx(with_key_file(dir, "a.key", hex_key(1) + "\n"));
  SslCtxPtr b = server_ctx(with_key_file(dir, "b.key", hex_key(3) + "\n"));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake first = handshake(a.get(), client.get());
    REQUIRE(first.done);
    Session s = session_of(first);
    Handshake second = handshake(b.get(), client.get(), s.session);
    REQUIRE(second.done);
    CHECK_FALSE(second.resumed);
    CHECK(session_of(second).ticket_name() == name_of(3));
  }
}

TEST_CASE("ticket keys: the key file accepts comments, blank lines, CRLF and upper-case hex") {
  std::string key = hex_key(0xab);
  std::string upper = key;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string why;
  auto keys = parse_ticket_keys(
      "# ferry ticket keys\n\n  " + upper + "  \r\n#old:\r\n" + hex_key(0xcd) + "\n\n", why);
  CAPTURE(why);
  REQUIRE(keys);
  REQUIRE(keys->size() == 2);
  CHECK((*keys)[0].name == name_of(0xab));
  CHECK((*keys)[1].name == name_of(0xcd));
  // The layout: name, HMAC key, AES key.
  auto byte_at = [&](size_t i) {
    return static_cast<unsigned char>(std::stoi(key.substr(2 * i, 2), nullptr, 16));
  };
  CHECK((*keys)[0].hmac[0] == byte_at(16));
  CHECK((*keys)[0].hmac[31] == byte_at(47));
  CHECK((*keys)[0].aes[0] == byte_at(48));
  CHECK((*keys)[0].aes[31] == byte_at(79));
}

TEST_CASE("ticket keys: key file errors name the line") {
  TempDir dir;
  const std::string good = hex_key(1);
  struct Case {
    std::string content;
    std::string message;
  };
  std::string bad_digit = hex_key(2);
  bad_digit[41] = 'g';
  const std::vector<Case> cases = {
      {good + "\n" + good.substr(2) + "\n", "line 2: expected 160 hex characters"},
      {good + "00\n", "line 1: expected 160 hex characters"},
      {"# a comment\n\n" + good + " " + good + "\n", "line 3: expected 160 hex characters"},
      {good + "\n" + bad_digit + "\n", "line 2: not a hex digit at column 42"},
      {good + "\n" + good + "\n", "line 2: the same key name (first 16 bytes) as an earlier key"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.message);
    CHECK(configure_errors(with_key_file(dir, "t.key", c.content)) ==
          std::vector<std::string>{kAt + c.message});
  }
  for (const std::string empty : {"", "\n\n", "# only a comment\n"}) {
    ServiceConfig s = with_key_file(dir, "empty.key", empty);
    CHECK(configure_errors(s) ==
          std::vector<std::string>{kAt + "no keys found in \"" + s.tls.ticket_key_file + "\""});
  }
}

TEST_CASE("ticket keys: an unreadable or world-readable key file is refused") {
  TempDir dir;
  ServiceConfig missing = make_service();
  missing.tls.ticket_key_file = dir.file("missing.key");
  CHECK(configure_errors(missing) ==
        std::vector<std::string>{kAt + "cannot read \"" + missing.tls.ticket_key_file +
                                 "\": No such file or directory"});

  ServiceConfig open = with_key_file(dir, "open.key", hex_key(1) + "\n");
  TempDir::chmod(open.tls.ticket_key_file,
                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                     std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  CHECK(configure_errors(open) ==
        std::vector<std::string>{kAt + "ticket key file \"" + open.tls.ticket_key_file +
                                 "\" is readable by other users (chmod 600 or 640)"});
  TempDir::chmod(open.tls.ticket_key_file,
                 std::filesystem::perms::owner_read | std::filesystem::perms::group_read);
  CHECK(configure_errors(open).empty());
}

// --- session_tickets = false --------------------------------------------------------------

TEST_CASE("ticket keys: session_tickets = false issues no ticket") {
  ServiceConfig service = make_service();
  service.tls.session_tickets = false;
  SslCtxPtr server = server_ctx(service);
  CHECK((SSL_CTX_get_options(server.get()) & SSL_OP_NO_TICKET) != 0);
  CHECK(SSL_CTX_get_num_tickets(server.get()) == 0);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake h = handshake(server.get(), client.get());
    REQUIRE(h.done);
    Session s = session_of(h);
    CHECK(SSL_SESSION_has_ticket(s.session) == 0);
    Handshake again = handshake(server.get(), client.get(), s.session);
    REQUIRE(again.done);
    CHECK_FALSE(again.resumed);
  }
}

// --- generated keys -----------------------------------------------------------------------

TEST_CASE("ticket keys: generated keys resume within one context") {
  SslCtxPtr server = server_ctx(make_service("generated-one"));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake first = handshake(server.get(), client.get());
    REQUIRE(first.done);
    Session s = session_of(first);
    REQUIRE(SSL_SESSION_has_ticket(s.session) == 1);
    Handshake second = handshake(server.get(), client.get(), s.session);
    REQUIRE(second.done);
    CHECK(second.resumed);
  }
}

TEST_CASE("ticket keys: generated keys are shared by one service's contexts only") {
  SslCtxPtr a = server_ctx(make_service("generated-shared"));
  SslCtxPtr a2 = server_ctx(make_service("generated-shared"));  // e.g. rebuilt on reload
  SslCtxPtr b = server_ctx(make_service("generated-other"));
  SslCtxPtr client = client_ctx(TLS1_3_VERSION);
  Handshake first = handshake(a.get(), client.get());
  REQUIRE(first.done);
  Session s = session_of(first);
  Handshake same_service = handshake(a2.get(), client.get(), s.session);
  REQUIRE(same_service.done);
  CHECK(same_service.resumed);
  Handshake other_service = handshake(b.get(), client.get(), s.session);
  REQUIRE(other_service.done);
  CHECK_FALSE(other_service.resumed);
}

namespace {

int switch_context(SSL* ssl, int* /*alert*/, void* arg) {
  return SSL_set_SSL_CTX(ssl, static_cast<SSL_CTX*>(arg)) != nullptr ? SSL_CLIENT_HELLO_SUCCESS
                                                                     : SSL_CLIENT_HELLO_ERROR;
}

}  // namespace

TEST_CASE("ticket keys: a context switched to by SNI issues and accepts the service's tickets") {
  SslCtxPtr first = server_ctx(make_service("generated-sni"));
  SslCtxPtr sni = server_ctx(make_service("generated-sni"));
  SSL_CTX_set_client_hello_cb(first.get(), switch_context, sni.get());
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SslCtxPtr client = client_ctx(version);
    Handshake h = handshake(first.get(), client.get());
    REQUIRE(h.done);
    CHECK(SSL_get_SSL_CTX(h.server.get()) == sni.get());
    Session s = session_of(h);
    REQUIRE(SSL_SESSION_has_ticket(s.session) == 1);
    Handshake again = handshake(first.get(), client.get(), s.session);
    REQUIRE(again.done);
    CHECK(again.resumed);
  }
}

TEST_CASE("ticket keys: generated keys rotate every 12 h and decrypt for 24 h more") {
  const auto t0 = TicketKeyRing::Clock::time_point{} + 1000h;
  auto ring = TicketKeyRing::generate(t0);
  REQUIRE(ring);
  TicketKey k0, k, out;
  REQUIRE(ring->encryption_key(t0, k0));
  REQUIRE(ring->encryption_key(t0 + 11h, k));
  CHECK(k.name == k0.name);
  CHECK(ring->decryption_key(k0.name.data(), t0 + 11h, out) == TicketKeyRing::Match::current);
  CHECK(out.aes == k0.aes);
  CHECK(out.hmac == k0.hmac);

  TicketKey k1;
  REQUIRE(ring->encryption_key(t0 + 12h, k1));
  CHECK(k1.name != k0.name);
  CHECK(k1.aes != k0.aes);
  CHECK(ring->decryption_key(k0.name.data(), t0 + 12h, out) == TicketKeyRing::Match::previous);
  CHECK(ring->decryption_key(k1.name.data(), t0 + 12h, out) == TicketKeyRing::Match::current);
  CHECK(ring->size() == 2);

  // No traffic for a while: the rotation happens lazily on the next use.
  CHECK(ring->decryption_key(k0.name.data(), t0 + 35h, out) == TicketKeyRing::Match::previous);
  CHECK(ring->size() == 3);  // k2 created at +35h
  CHECK(ring->decryption_key(k0.name.data(), t0 + 36h, out) == TicketKeyRing::Match::none);
  CHECK(ring->decryption_key(k1.name.data(), t0 + 36h, out) == TicketKeyRing::Match::previous);
  CHECK(ring->size() == 2);
  CHECK(ring->decryption_key(k1.name.data(), t0 + 48h, out) == TicketKeyRing::Match::none);

  std::array<unsigned char, 16> unknown{};
  CHECK(ring->decryption_key(unknown.data(), t0 + 48h, out) == TicketKeyRing::Match::none);
}

TEST_CASE("ticket keys: file keys never rotate or expire") {
  std::string why;
  auto keys = parse_ticket_keys(hex_key(1) + "\n" + hex_key(2) + "\n", why);
  REQUIRE(keys);
  TicketKeyRing ring(std::move(*keys));
  const auto later = TicketKeyRing::Clock::now() + 24h * 365;
  TicketKey k, out;
  REQUIRE(ring.encryption_key(later, k));
  CHECK(k.name == name_of(1));
  auto second = name_of(2);
  CHECK(ring.decryption_key(second.data(), later, out) == TicketKeyRing::Match::previous);
  CHECK(ring.size() == 2);
}

TEST_CASE("ticket keys: the ring is safe to use from several threads while it rotates") {
  const auto t0 = TicketKeyRing::Clock::time_point{} + 1000h;
  auto ring = TicketKeyRing::generate(t0);
  REQUIRE(ring);
  // One clock for all threads, a minute per use. A key may legitimately expire between
  // encrypting and decrypting only if the others moved the clock on by a day meanwhile.
  std::atomic<int> minutes{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        const int at = minutes++;
        const auto now = t0 + std::chrono::minutes(at);
        TicketKey k, out;
        if (!ring->encryption_key(now, k)) {
          ++failures;
        } else if (ring->decryption_key(k.name.data(), now, out) == TicketKeyRing::Match::none &&
                   minutes.load() - at < 24 * 60) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(ring->size() <= 4);
}

}  // namespace ferry
