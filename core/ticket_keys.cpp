#include "core/ticket_keys.h"

#include "core/openssl_ptr.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "core/handshake_failure.h"

namespace ferry {
namespace {

constexpr size_t kKeyBytes = 80;
constexpr size_t kKeyHexChars = 2 * kKeyBytes;
constexpr size_t kMaxKeyFileSize = 1024 * 1024;

static_assert(sizeof(TicketKey::name) + sizeof(TicketKey::hmac) + sizeof(TicketKey::aes) ==
              kKeyBytes);

// A string holding secret material, wiped when it goes away.
struct SecretString {
  std::string text;
  ~SecretString() { OPENSSL_cleanse(text.data(), text.size()); }
};

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads a small file; on failure sets `why` to the strerror() text.
bool read_small_file(const std::string& path, std::string& out, std::string& why) {
  FdCloser file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    why = std::strerror(errno);
    return false;
  }
  out.reserve(4096);
  unsigned char buf[4096];
  for (;;) {
    ssize_t n = ::read(file.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      why = std::strerror(errno);
      OPENSSL_cleanse(buf, sizeof buf);
      return false;
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > kMaxKeyFileSize) {
      why = "file too large";
      OPENSSL_cleanse(buf, sizeof buf);
      return false;
    }
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  size_t first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  size_t last = s.find_last_not_of(kSpace);
  return s.substr(first, last - first + 1);
}

std::string quoted(const std::string& path) {
  return "\"" + path + "\"";
}

// --- the rings of services and of contexts ---------------------------------------------------

// Generated rings by service name, shared by every context of the service while one lives.
std::shared_ptr<TicketKeyRing> generated_ring_for(const std::string& service) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<TicketKeyRing>> rings;
  std::lock_guard lock(mu);
  std::erase_if(rings, [](const auto& entry) { return entry.second.expired(); });
  if (auto it = rings.find(service); it != rings.end()) return it->second.lock();
  auto ring = TicketKeyRing::generate(TicketKeyRing::Clock::now());
  if (ring) rings.emplace(service, ring);
  return ring;
}

using RingHolder = std::shared_ptr<TicketKeyRing>;

void free_ring_holder(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/,
                      long /*argl*/, void* /*argp*/) {
  delete static_cast<RingHolder*>(ptr);
}

// SSL_CTX ex_data slot holding a heap RingHolder, deleted with the context.
int ring_index() {
  static const int index =
      checked_ex_index(SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_ring_holder));
  return index;
}

TicketKeyRing* ring_of(SSL_CTX* ctx) {
  auto* holder = static_cast<RingHolder*>(SSL_CTX_get_ex_data(ctx, ring_index()));
  return holder != nullptr ? holder->get() : nullptr;
}

bool set_hmac_key(EVP_MAC_CTX* mac, TicketKey& key) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac.data(), key.hmac.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  return EVP_MAC_CTX_set_params(mac, params) == 1;
}

// AES-256-CBC fetched once: with EVP_aes_256_cbc() OpenSSL 3.0 looks the provider's
// implementation up by name on every EVP_CipherInit_ex, i.e. for each ticket issued or opened
// (~2% of a full handshake's instructions under callgrind). Never freed: it lives as long as the
// process (OpenSSL's own ticket code keeps its fetched ciphers the same way, per SSL_CTX).
const EVP_CIPHER* ticket_cipher() {
  static const EVP_CIPHER* fetched = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
  return fetched != nullptr ? fetched : EVP_aes_256_cbc();
}

// SSL_CTX_set_tlsext_ticket_key_evp_cb: 1 = use this key, 2 = decrypted, and the client gets a
// fresh ticket (an older key, or TLS 1.3), 0 = no such key / no ticket, -1 = error.
int on_ticket_key(SSL* ssl, unsigned char* key_name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
                  EVP_MAC_CTX* mac, int enc) {
  TicketKeyRing* ring = ring_of(SSL_get_SSL_CTX(ssl));
  if (ring == nullptr) return 0;
  const auto now = TicketKeyRing::Clock::now();
  TicketKey key;
  if (enc == 1) {
    if (!ring->encryption_key(now, key)) return 0;
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(ticket_cipher())) != 1) return -1;
    std::memcpy(key_name, key.name.data(), key.name.size());
    if (EVP_EncryptInit_ex(cipher, ticket_cipher(), nullptr, key.aes.data(), iv) != 1 ||
        !set_hmac_key(mac, key)) {
      return -1;
    }
    return 1;
  }
  const TicketKeyRing::Match match = ring->decryption_key(key_name, now, key);
  if (match == TicketKeyRing::Match::none) return 0;
  if (EVP_DecryptInit_ex(cipher, ticket_cipher(), nullptr, key.aes.data(), iv) != 1 ||
      !set_hmac_key(mac, key)) {
    return -1;
  }
  // 2 also for every TLS 1.3 resumption: clients use a TLS 1.3 ticket once (RFC 8446, C.4), so
  // a resumed connection must get a fresh one or the next connection is a full handshake.
  if (SSL_version(ssl) == TLS1_3_VERSION) return 2;
  return match == TicketKeyRing::Match::current ? 1 : 2;
}

bool random_key(TicketKey& key) {
  return RAND_bytes(key.name.data(), static_cast<int>(key.name.size())) == 1 &&
         RAND_priv_bytes(key.hmac.data(), static_cast<int>(key.hmac.size())) == 1 &&
         RAND_priv_bytes(key.aes.data(), static_cast<int>(key.aes.size())) == 1;
}

}  // namespace

TicketKey::~TicketKey() {
  OPENSSL_cleanse(name.data(), name.size());
  OPENSSL_cleanse(hmac.data(), hmac.size());
  OPENSSL_cleanse(aes.data(), aes.size());
}

std::optional<std::vector<TicketKey>> parse_ticket_keys(std::string_view text, std::string& why) {
  std::vector<TicketKey> keys;
  int line_no = 0;
  while (!text.empty()) {
    ++line_no;
    size_t eol = text.find('\n');
    std::string_view line = trim(text.substr(0, eol));
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    if (line.empty() || line.front() == '#') continue;
    const std::string where = "line " + std::to_string(line_no) + ": ";
    if (line.size() != kKeyHexChars) {
      why = where + "expected " + std::to_string(kKeyHexChars) + " hex characters";
      return std::nullopt;
    }
    std::array<unsigned char, kKeyBytes> bytes{};
    for (size_t i = 0; i < kKeyBytes; ++i) {
      int hi = hex_digit(line[2 * i]);
      int lo = hex_digit(line[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        OPENSSL_cleanse(bytes.data(), bytes.size());
        why = where + "not a hex digit at column " + std::to_string(2 * i + (hi < 0 ? 1 : 2));
        return std::nullopt;
      }
      bytes[i] = static_cast<unsigned char>(hi << 4 | lo);
    }
    TicketKey& key = keys.emplace_back();
    std::memcpy(key.name.data(), bytes.data(), key.name.size());
    std::memcpy(key.hmac.data(), bytes.data() + key.name.size(), key.hmac.size());
    std::memcpy(key.aes.data(), bytes.data() + key.name.size() + key.hmac.size(), key.aes.size());
    OPENSSL_cleanse(bytes.data(), bytes.size());
    for (size_t i = 0; i + 1 < keys.size(); ++i) {
      if (keys[i].name == key.name) {
        why = where + "the same key name (first 16 bytes) as an earlier key";
        return std::nullopt;
      }
    }
  }
  if (keys.empty()) {
    why = "no keys";
    return std::nullopt;
  }
  return keys;
}

// --- TicketKeyRing ---------------------------------------------------------------------------

TicketKeyRing::TicketKeyRing(std::vector<TicketKey> keys) : rotating_(false) {
  keys_.reserve(keys.size());
  for (auto& key : keys) keys_.push_back({key, Clock::time_point{}});
}

std::shared_ptr<TicketKeyRing> TicketKeyRing::generate(Clock::time_point now) {
  std::shared_ptr<TicketKeyRing> ring(new TicketKeyRing());
  Entry first{TicketKey{}, now};
  if (!random_key(first.key)) return nullptr;
  ring->keys_.push_back(std::move(first));
  return ring;
}

void TicketKeyRing::rotate_if_due(Clock::time_point now) {
  if (!rotating_) return;
  if (!keys_.empty() && now - keys_.front().created >= kEncryptFor) {
    Entry next{TicketKey{}, now};
    // If the random generator fails, the old key keeps encrypting until it expires.
    if (random_key(next.key)) keys_.insert(keys_.begin(), std::move(next));
  }
  // A key encrypts for kEncryptFor after it was created, then decrypts for kAcceptAfter.
  std::erase_if(keys_,
                [&](const Entry& e) { return now - e.created >= kEncryptFor + kAcceptAfter; });
}

bool TicketKeyRing::encryption_key(Clock::time_point now, TicketKey& out) {
  std::lock_guard lock(mu_);
  rotate_if_due(now);
  if (keys_.empty()) return false;
  if (rotating_ && now - keys_.front().created >= kEncryptFor + kAcceptAfter) return false;
  out = keys_.front().key;
  return true;
}

TicketKeyRing::Match TicketKeyRing::decryption_key(const unsigned char* name, Clock::time_point now,
                                                   TicketKey& out) {
  std::lock_guard lock(mu_);
  rotate_if_due(now);
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (CRYPTO_memcmp(keys_[i].key.name.data(), name, keys_[i].key.name.size()) == 0) {
      out = keys_[i].key;
      return i == 0 ? Match::current : Match::previous;
    }
  }
  return Match::none;
}

size_t TicketKeyRing::size() const {
  std::lock_guard lock(mu_);
  return keys_.size();
}

// --- configuring a context -------------------------------------------------------------------

bool configure_session_tickets(SSL_CTX* ctx, const ServiceConfig& service,
                               std::vector<ConfigError>& errors,
                               std::vector<ConfigError>& /*warnings*/) {
  const std::string prefix = "service[" + std::to_string(service.index) + "]";
  const TlsPolicy& tls = service.tls;
  if (!tls.session_tickets) {
    // TLS 1.2: no tickets (the session cache still resumes); TLS 1.3: no tickets at all.
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
    return true;
  }

  std::shared_ptr<TicketKeyRing> ring;
  if (!tls.ticket_key_file.empty()) {
    auto file_error = [&](std::string message) {
      errors.push_back({tls.ticket_key_file_pos, prefix + ".ticket_key_file", std::move(message)});
      return false;
    };
    const std::string& path = tls.ticket_key_file;
    SecretString text;
    std::string why;
    if (!read_small_file(path, text.text, why)) {
      return file_error("cannot read " + quoted(path) + ": " + why);
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & S_IROTH) != 0) {
      return file_error("ticket key file " + quoted(path) +
                        " is readable by other users (chmod 600 or 640)");
    }
    auto keys = parse_ticket_keys(text.text, why);
    if (!keys) {
      if (why == "no keys") return file_error("no keys found in " + quoted(path));
      return file_error(why);
    }
    ring = std::make_shared<TicketKeyRing>(std::move(*keys));
  } else {
    ring = generated_ring_for(service.name);
    if (!ring) {
      errors.push_back(
          {service.pos, prefix, "cannot generate session ticket keys: " + drain_openssl_errors()});
      return false;
    }
  }

  ERR_clear_error();
  auto* old = static_cast<RingHolder*>(SSL_CTX_get_ex_data(ctx, ring_index()));
  auto holder = std::make_unique<RingHolder>(std::move(ring));
  if (SSL_CTX_set_ex_data(ctx, ring_index(), holder.get()) != 1) {
    errors.push_back(
        {service.pos, prefix, "cannot set up session tickets: " + drain_openssl_errors()});
    return false;
  }
  holder.release();  // owned by ctx now, deleted by free_ring_holder
  delete old;
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
  if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key) != 1) {
    errors.push_back(
        {service.pos, prefix, "cannot set up session tickets: " + drain_openssl_errors()});
    return false;
  }
  return true;
}

}  // namespace ferry
