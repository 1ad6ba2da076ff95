#pragma once
// Address ranges for allow/deny and accept_proxy_from: "10.0.0.0/8", "::1/128", or a bare address
// (a /32 or /128). An IPv4 range also matches IPv4-mapped IPv6 addresses (::ffff:10.1.2.3).

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

struct Cidr {
  int family = 0;                       // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};       // network bytes; the first 4 for AF_INET; host bits zero
  unsigned prefix = 0;                  // 0..32 or 0..128

  bool contains(const sockaddr* sa) const;  // false for non-IP addresses
  std::string str() const;                  // canonical "10.0.0.0/8", "2001:db8::/32"
};

// Strict: the address must parse (inet_pton), the prefix is decimal without sign or leading
// zeros and within range. Host bits set below the prefix ("10.1.2.3/8") are an error, so a typo
// cannot silently widen or narrow a range. On failure returns nullopt and, if given, a reason.
std::optional<Cidr> parse_cidr(std::string_view text, std::string* why = nullptr);

// True if any range in `list` contains `sa`.
bool cidr_match(const std::vector<Cidr>& list, const sockaddr* sa);

}  // namespace ferry
