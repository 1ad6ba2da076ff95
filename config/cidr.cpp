// Address ranges: strict parsing and matching against socket addresses.
#include "config/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace ferry {
namespace {

std::optional<Cidr> fail(std::string* why, std::string message) {
  if (why) *why = std::move(message);
  return std::nullopt;
}

// True if the first `prefix` bits of `a` and `b` are equal.
bool same_prefix(const uint8_t* a, const uint8_t* b, unsigned prefix) {
  const unsigned whole = prefix / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  const unsigned rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xFF << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

// Clears every bit of `addr` (`bytes` long) below the first `prefix` bits.
void clear_host_bits(uint8_t* addr, size_t bytes, unsigned prefix) {
  for (size_t i = 0; i < bytes; ++i) {
    const size_t first_bit = i * 8;
    if (first_bit >= prefix) {
      addr[i] = 0;
    } else if (prefix - first_bit < 8) {
      addr[i] &= static_cast<uint8_t>(0xFF << (8 - (prefix - first_bit)));
    }
  }
}

// ::ffff:a.b.c.d
bool is_v4_mapped(const in6_addr& a) {
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  return std::memcmp(a.s6_addr, kMappedPrefix, sizeof kMappedPrefix) == 0;
}

}  // namespace

std::optional<Cidr> parse_cidr(std::string_view text, std::string* why) {
  if (text.empty()) return fail(why, "empty (use an address or address/prefix)");

  const size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  if (address.empty()) return fail(why, "missing address before '/'");

  Cidr cidr;
  size_t bytes = 0;
  if (address.find(':') != std::string::npos) {
    cidr.family = AF_INET6;
    bytes = 16;
  } else {
    cidr.family = AF_INET;
    bytes = 4;
  }
  if (inet_pton(cidr.family, address.c_str(), cidr.addr.data()) != 1) {
    return fail(why, std::string("bad ") + (cidr.family == AF_INET ? "IPv4" : "IPv6") +
                         " address \"" + address + "\"");
  }

  const unsigned max_prefix = static_cast<unsigned>(bytes * 8);
  cidr.prefix = max_prefix;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const bool decimal = !digits.empty() && digits.size() <= 3 &&
                         digits.find_first_not_of("0123456789") == std::string_view::npos &&
                         (digits.size() == 1 || digits[0] != '0');
    if (!decimal) return fail(why, "bad prefix length \"" + std::string(digits) + "\"");
    unsigned value = 0;
    for (char c : digits) value = value * 10 + static_cast<unsigned>(c - '0');
    if (value > max_prefix) {
      return fail(why, "prefix length " + std::to_string(value) + " is out of range for " +
                           (cidr.family == AF_INET ? "IPv4 (0..32)" : "IPv6 (0..128)"));
    }
    cidr.prefix = value;
  }

  Cidr network = cidr;
  clear_host_bits(network.addr.data(), bytes, cidr.prefix);
  if (network.addr != cidr.addr) {
    return fail(why, "host bits set below the prefix (did you mean " + network.str() + "?)");
  }
  return cidr;
}

bool Cidr::contains(const sockaddr* sa) const {
  if (sa == nullptr) return false;
  if (sa->sa_family == AF_INET) {
    if (family != AF_INET) return false;
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    return same_prefix(addr.data(), reinterpret_cast<const uint8_t*>(&sin->sin_addr), prefix);
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (family == AF_INET6) return same_prefix(addr.data(), sin6->sin6_addr.s6_addr, prefix);
    // An IPv4 range matches the IPv4 address inside an IPv4-mapped IPv6 address; an IPv6 range
    // matches IPv6 addresses only (a mapped address as its IPv6 bytes).
    if (family == AF_INET && is_v4_mapped(sin6->sin6_addr)) {
      return same_prefix(addr.data(), sin6->sin6_addr.s6_addr + 12, prefix);
    }
  }
  return false;
}

std::string Cidr::str() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(family, addr.data(), text, sizeof text) == nullptr) return "?";
  return std::string(text) + "/" + std::to_string(prefix);
}

bool cidr_match(const std::vector<Cidr>& list, const sockaddr* sa) {
  for (const Cidr& cidr : list) {
    if (cidr.contains(sa)) return true;
  }
  return false;
}

}  // namespace ferry
