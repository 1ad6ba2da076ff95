#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <doctest/doctest.h>

#include "config/cidr.h"

using ferry::Cidr;
using ferry::cidr_match;
using ferry::parse_cidr;

namespace {

// The reason parse_cidr gives for rejecting `text` ("" if it accepted it).
std::string why_rejected(std::string_view text) {
  std::string why;
  if (parse_cidr(text, &why)) return "";
  return why;
}

// A socket address for a numeric IPv4 or IPv6 address.
sockaddr_storage addr(const char* text) {
  sockaddr_storage ss{};
  auto& sin = reinterpret_cast<sockaddr_in&>(ss);
  auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
  if (inet_pton(AF_INET, text, &sin.sin_addr) == 1) {
    sin.sin_family = AF_INET;
    sin.sin_port = htons(443);
  } else {
    REQUIRE(inet_pton(AF_INET6, text, &sin6.sin6_addr) == 1);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(443);
  }
  return ss;
}

// True if the range `range` (which must parse) contains the address `text`.
bool contains(const char* range, const char* text) {
  const auto cidr = parse_cidr(range);
  REQUIRE(cidr);
  const sockaddr_storage ss = addr(text);
  return cidr->contains(reinterpret_cast<const sockaddr*>(&ss));
}

}  // namespace

TEST_CASE("parse_cidr reads IPv4 and IPv6 ranges") {
  struct Case {
    const char* text;
    int family;
    unsigned prefix;
    const char* canonical;
  };
  const Case cases[] = {
      {"10.0.0.0/8", AF_INET, 8, "10.0.0.0/8"},
      {"192.168.1.0/24", AF_INET, 24, "192.168.1.0/24"},
      {"0.0.0.0/0", AF_INET, 0, "0.0.0.0/0"},
      {"203.0.113.7/32", AF_INET, 32, "203.0.113.7/32"},
      {"2001:db8::/32", AF_INET6, 32, "2001:db8::/32"},
      {"2001:0DB8:0000::/48", AF_INET6, 48, "2001:db8::/48"},
      {"::/0", AF_INET6, 0, "::/0"},
      {"::1/128", AF_INET6, 128, "::1/128"},
      {"fe80::/10", AF_INET6, 10, "fe80::/10"},
      {"::ffff:10.0.0.0/104", AF_INET6, 104, "::ffff:10.0.0.0/104"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    const auto cidr = parse_cidr(c.text);
    REQUIRE(cidr);
    CHECK(cidr->family == c.family);
    CHECK(cidr->prefix == c.prefix);
    CHECK(cidr->str() == c.canonical);
  }
}

TEST_CASE("parse_cidr reads a bare address as a single host") {
  const auto v4 = parse_cidr("127.0.0.1");
  REQUIRE(v4);
  CHECK(v4->family == AF_INET);
  CHECK(v4->prefix == 32);
  CHECK(v4->str() == "127.0.0.1/32");
  CHECK(v4->addr[0] == 127);
  CHECK(v4->addr[3] == 1);
  const auto v6 = parse_cidr("2001:db8::1");
  REQUIRE(v6);
  CHECK(v6->family == AF_INET6);
  CHECK(v6->prefix == 128);
  CHECK(v6->str() == "2001:db8::1/128");
}

TEST_CASE("parse_cidr rejects host bits below the prefix") {
  CHECK(why_rejected("10.1.2.3/8") == "host bits set below the prefix (did you mean 10.0.0.0/8?)");
  CHECK(why_rejected("192.168.1.1/24") ==
        "host bits set below the prefix (did you mean 192.168.1.0/24?)");
  CHECK(why_rejected("10.0.0.128/25") == "");
  CHECK(why_rejected("10.0.0.64/25") ==
        "host bits set below the prefix (did you mean 10.0.0.0/25?)");
  CHECK(why_rejected("2001:db8::1/64") ==
        "host bits set below the prefix (did you mean 2001:db8::/64?)");
  CHECK(why_rejected("::1/0") == "host bits set below the prefix (did you mean ::/0?)");
}

TEST_CASE("parse_cidr rejects prefix lengths out of range") {
  CHECK(why_rejected("10.0.0.0/33") == "prefix length 33 is out of range for IPv4 (0..32)");
  CHECK(why_rejected("::/129") == "prefix length 129 is out of range for IPv6 (0..128)");
  CHECK(why_rejected("::/999") == "prefix length 999 is out of range for IPv6 (0..128)");
  CHECK(why_rejected("::/1000") == "bad prefix length \"1000\"");
}

TEST_CASE("parse_cidr rejects prefixes with signs, leading zeros or junk") {
  for (const char* text :
       {"10.0.0.0/08", "10.0.0.0/+8", "10.0.0.0/-8", "10.0.0.0/8 ", "10.0.0.0/ 8", "10.0.0.0/",
        "10.0.0.0/8/8", "10.0.0.0/0x8", "::/00", "::/1e2"}) {
    CAPTURE(text);
    CHECK(why_rejected(text).starts_with("bad prefix length \""));
  }
}

TEST_CASE("parse_cidr rejects bad addresses") {
  CHECK(why_rejected("") == "empty (use an address or address/prefix)");
  CHECK(why_rejected("/8") == "missing address before '/'");
  CHECK(why_rejected("10.0.0/8") == "bad IPv4 address \"10.0.0\"");
  CHECK(why_rejected("010.0.0.0/8") == "bad IPv4 address \"010.0.0.0\"");
  CHECK(why_rejected("256.0.0.0/8") == "bad IPv4 address \"256.0.0.0\"");
  CHECK(why_rejected("localhost") == "bad IPv4 address \"localhost\"");
  CHECK(why_rejected(" 10.0.0.0/8") == "bad IPv4 address \" 10.0.0.0\"");
  CHECK(why_rejected("1::2::3/64") == "bad IPv6 address \"1::2::3\"");
  CHECK(why_rejected("fe80::1%eth0") == "bad IPv6 address \"fe80::1%eth0\"");
  CHECK(why_rejected("[::1]/128") == "bad IPv6 address \"[::1]\"");
}

TEST_CASE("Cidr::contains matches IPv4 addresses at the range boundaries") {
  CHECK(contains("10.0.0.0/8", "10.0.0.0"));
  CHECK(contains("10.0.0.0/8", "10.255.255.255"));
  CHECK_FALSE(contains("10.0.0.0/8", "9.255.255.255"));
  CHECK_FALSE(contains("10.0.0.0/8", "11.0.0.0"));
  CHECK(contains("192.168.4.0/22", "192.168.7.255"));
  CHECK_FALSE(contains("192.168.4.0/22", "192.168.8.0"));
  CHECK_FALSE(contains("192.168.4.0/22", "192.168.3.255"));
  CHECK(contains("203.0.113.7", "203.0.113.7"));
  CHECK_FALSE(contains("203.0.113.7", "203.0.113.6"));
  CHECK(contains("0.0.0.0/0", "255.255.255.255"));
  CHECK(contains("0.0.0.0/0", "0.0.0.0"));
}

TEST_CASE("Cidr::contains matches IPv6 addresses at the range boundaries") {
  CHECK(contains("2001:db8::/32", "2001:db8::"));
  CHECK(contains("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
  CHECK_FALSE(contains("2001:db8::/32", "2001:db9::"));
  CHECK_FALSE(contains("2001:db8::/32", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
  CHECK(contains("fe80::/10", "febf::1"));
  CHECK_FALSE(contains("fe80::/10", "fec0::1"));
  CHECK(contains("::1/128", "::1"));
  CHECK_FALSE(contains("::1/128", "::2"));
  CHECK(contains("::/0", "ffff::1"));
}

TEST_CASE("Cidr::contains matches IPv4-mapped IPv6 addresses against IPv4 ranges") {
  CHECK(contains("10.0.0.0/8", "::ffff:10.1.2.3"));
  CHECK_FALSE(contains("10.0.0.0/8", "::ffff:11.1.2.3"));
  CHECK(contains("0.0.0.0/0", "::ffff:1.2.3.4"));
  // Only the mapped form: not IPv4-compatible (::a.b.c.d) or other addresses ending the same.
  CHECK_FALSE(contains("10.0.0.0/8", "::10.1.2.3"));
  CHECK_FALSE(contains("0.0.0.0/0", "::1"));
  CHECK_FALSE(contains("0.0.0.0/0", "64:ff9b::10.1.2.3"));
}

TEST_CASE("Cidr::contains keeps IPv6 ranges to IPv6 addresses") {
  CHECK_FALSE(contains("::/0", "10.0.0.1"));
  CHECK_FALSE(contains("::ffff:10.0.0.0/104", "10.0.0.1"));
  CHECK(contains("::ffff:10.0.0.0/104", "::ffff:10.0.0.1"));
}

TEST_CASE("Cidr::contains is false for non-IP addresses") {
  const auto any = parse_cidr("0.0.0.0/0");
  REQUIRE(any);
  CHECK_FALSE(any->contains(nullptr));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  CHECK_FALSE(any->contains(reinterpret_cast<const sockaddr*>(&un)));
  sockaddr_storage unspec{};
  CHECK_FALSE(any->contains(reinterpret_cast<const sockaddr*>(&unspec)));
}

TEST_CASE("cidr_match is true if any range matches") {
  const std::vector<Cidr> list = {*parse_cidr("10.0.0.0/8"), *parse_cidr("2001:db8::/32")};
  const sockaddr_storage in_v4 = addr("10.9.9.9");
  const sockaddr_storage in_v6 = addr("2001:db8::5");
  const sockaddr_storage mapped = addr("::ffff:10.0.0.1");
  const sockaddr_storage outside = addr("192.0.2.1");
  CHECK(cidr_match(list, reinterpret_cast<const sockaddr*>(&in_v4)));
  CHECK(cidr_match(list, reinterpret_cast<const sockaddr*>(&in_v6)));
  CHECK(cidr_match(list, reinterpret_cast<const sockaddr*>(&mapped)));
  CHECK_FALSE(cidr_match(list, reinterpret_cast<const sockaddr*>(&outside)));
  CHECK_FALSE(cidr_match({}, reinterpret_cast<const sockaddr*>(&in_v4)));
}
