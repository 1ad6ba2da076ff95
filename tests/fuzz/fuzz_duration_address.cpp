// The small value parsers of the config layer on arbitrary text: parse_duration,
// parse_host_port and parse_cidr. The first input byte picks the parser (so one corpus and one
// run cover all three); the rest is the text. Beyond not crashing, each must round-trip: what it
// accepted, written back in canonical form, parses to the same value.

#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "config/cidr.h"
#include "config/config.h"
#include "tests/fuzz/fuzz_invariant.h"

namespace {

constexpr int64_t kMaxMs = int64_t{24} * 3600 * 1000;

void fuzz_duration(std::string_view text) {
  std::string why;
  const auto d = ferry::parse_duration(text, &why);
  if (!d) {
    FUZZ_CHECK(!why.empty());
    return;
  }
  FUZZ_CHECK(d->count() > 0 && d->count() <= kMaxMs);
  FUZZ_CHECK(!text.empty() && text.front() >= '0' && text.front() <= '9');
  // The same duration written in milliseconds reads back the same.
  const auto again = ferry::parse_duration(std::to_string(d->count()) + "ms");
  FUZZ_CHECK(again && *again == *d);
}

void fuzz_host_port(std::string_view text) {
  std::string why;
  const auto hp = ferry::parse_host_port(text, &why);
  if (!hp) {
    FUZZ_CHECK(!why.empty());
    return;
  }
  FUZZ_CHECK(!hp->host.empty());
  FUZZ_CHECK(hp->port != 0);
  FUZZ_CHECK(text.find(hp->host) != std::string_view::npos);
  const auto again = ferry::parse_host_port(hp->str());
  FUZZ_CHECK(again && again->host == hp->host && again->port == hp->port);
}

// A sockaddr for the first bytes of `addr` (AF_INET) or all 16 (AF_INET6).
sockaddr_storage to_sockaddr(int family, const std::array<uint8_t, 16>& addr) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    std::memcpy(&sin->sin_addr, addr.data(), 4);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    std::memcpy(&sin6->sin6_addr, addr.data(), 16);
  }
  return ss;
}

void fuzz_cidr(std::string_view text) {
  std::string why;
  const auto c = ferry::parse_cidr(text, &why);
  if (!c) {
    FUZZ_CHECK(!why.empty());
    return;
  }
  FUZZ_CHECK(c->family == AF_INET || c->family == AF_INET6);
  const unsigned bits = c->family == AF_INET ? 32 : 128;
  const size_t bytes = bits / 8;
  FUZZ_CHECK(c->prefix <= bits);
  // Host bits are zero, and so are the unused bytes of an IPv4 range.
  for (unsigned bit = c->prefix; bit < 128; ++bit) {
    FUZZ_CHECK((c->addr[bit / 8] & (0x80u >> (bit % 8))) == 0);
  }
  // Canonical text reads back as the same range.
  const auto again = ferry::parse_cidr(c->str());
  FUZZ_CHECK(again && again->family == c->family && again->prefix == c->prefix &&
             again->addr == c->addr);
  // The range contains its own network address and, when it is not a single address, the
  // address with every host bit set; an IPv4 range also contains its IPv4-mapped form.
  sockaddr_storage net = to_sockaddr(c->family, c->addr);
  FUZZ_CHECK(c->contains(reinterpret_cast<const sockaddr*>(&net)));
  std::array<uint8_t, 16> last = c->addr;
  for (unsigned bit = c->prefix; bit < bits; ++bit) last[bit / 8] |= uint8_t(0x80u >> (bit % 8));
  sockaddr_storage top = to_sockaddr(c->family, last);
  FUZZ_CHECK(c->contains(reinterpret_cast<const sockaddr*>(&top)));
  if (c->family == AF_INET) {
    std::array<uint8_t, 16> mapped{};
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    std::memcpy(mapped.data() + 12, c->addr.data(), 4);
    sockaddr_storage m = to_sockaddr(AF_INET6, mapped);
    FUZZ_CHECK(c->contains(reinterpret_cast<const sockaddr*>(&m)));
  }
  // Just outside: flipping the last prefix bit leaves the range.
  if (c->prefix > 0) {
    std::array<uint8_t, 16> outside = c->addr;
    const unsigned bit = c->prefix - 1;
    outside[bit / 8] ^= uint8_t(0x80u >> (bit % 8));
    sockaddr_storage o = to_sockaddr(c->family, outside);
    FUZZ_CHECK(!c->contains(reinterpret_cast<const sockaddr*>(&o)));
  }
  FUZZ_CHECK(bytes == 4 || bytes == 16);
  // Non-IP addresses never match.
  sockaddr_storage unix_addr{};
  unix_addr.ss_family = AF_UNIX;
  FUZZ_CHECK(!c->contains(reinterpret_cast<const sockaddr*>(&unix_addr)));
  FUZZ_CHECK(ferry::cidr_match({*c}, reinterpret_cast<const sockaddr*>(&net)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0:
      fuzz_duration(text);
      break;
    case 1:
      fuzz_host_port(text);
      break;
    default:
      fuzz_cidr(text);
      break;
  }
  return 0;
}
