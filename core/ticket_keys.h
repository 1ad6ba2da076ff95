#pragma once
// Server mode: session-ticket keys. From `ticket_key_file` (one key per line, 80 bytes in hex
// as `openssl rand -hex 80` prints them; the first encrypts, all decrypt) so a fleet resumes each
// other's sessions; otherwise generated at start and rotated (a new encrypting key every 12 h,
// the previous ones still accepted for 24 h). `session_tickets = false` turns tickets off.

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/ssl.h>

#include "config/config.h"

namespace ferry {

// Install the ticket key callback (or SSL_OP_NO_TICKET) on `ctx`. Problems are appended with
// the positions of the keys; returns false on any error.
//
// Generated keys belong to the service (by name), not to one context: every SSL_CTX configured
// for the same service shares them while any of them is alive, so sessions survive a reload
// that rebuilds the context, and SNI contexts of one service accept each other's tickets.
bool configure_session_tickets(SSL_CTX* ctx, const ServiceConfig& service,
                               std::vector<ConfigError>& errors,
                               std::vector<ConfigError>& warnings);

// One ticket key in the layout nginx and HAProxy use for 80-byte keys. A secret: the buffers
// are wiped on destruction and never logged.
struct TicketKey {
  std::array<unsigned char, 16> name{};  // sent in clear in the ticket, picks the key
  std::array<unsigned char, 32> hmac{};  // HMAC-SHA256 key
  std::array<unsigned char, 32> aes{};   // AES-256-CBC key

  TicketKey() = default;
  TicketKey(const TicketKey&) = default;
  TicketKey& operator=(const TicketKey&) = default;
  ~TicketKey();
};

// Parses the text of a ticket key file: one key per line as 160 hex digits; blank lines and
// lines starting with '#' are skipped. On error returns nullopt and sets `why`
// ("line 2: expected 160 hex characters").
std::optional<std::vector<TicketKey>> parse_ticket_keys(std::string_view text, std::string& why);

// The ticket keys of one service, used from every worker thread (guarded by a mutex; the
// critical sections only copy 80 bytes).
class TicketKeyRing {
 public:
  using Clock = std::chrono::steady_clock;
  // Generated keys: each encrypts for kEncryptFor, then still decrypts for kAcceptAfter.
  static constexpr std::chrono::hours kEncryptFor{12};
  static constexpr std::chrono::hours kAcceptAfter{24};

  enum class Match { none, current, previous };

  // Fixed keys (from a file): the first encrypts, all decrypt, none expire. `keys` not empty.
  explicit TicketKeyRing(std::vector<TicketKey> keys);
  // One random key created at `now`, rotated lazily. nullptr if the random generator fails.
  static std::shared_ptr<TicketKeyRing> generate(Clock::time_point now);

  // The key to encrypt a new ticket with (rotating first when due). False only when a due
  // rotation failed and the current key has expired too.
  bool encryption_key(Clock::time_point now, TicketKey& out);
  // The key named `name` (16 bytes): current (the one that encrypts), previous (the ticket
  // should be renewed) or none (unknown or expired).
  Match decryption_key(const unsigned char* name, Clock::time_point now, TicketKey& out);
  size_t size() const;

 private:
  struct Entry {
    TicketKey key;
    Clock::time_point created;
  };
  TicketKeyRing() : rotating_(true) {}
  void rotate_if_due(Clock::time_point now);  // mu_ held

  mutable std::mutex mu_;
  std::vector<Entry> keys_;  // newest first; [0] encrypts; guarded by mu_
  const bool rotating_;      // generated keys rotate and expire, file keys do not
};

}  // namespace ferry
