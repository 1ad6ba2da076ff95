#include <doctest/doctest.h>

#include "config/config.h"

using ferry::HostPort;
using ferry::parse_host_port;

namespace {

// The reason parse_host_port gives for rejecting `text` ("" if it accepted it).
std::string why_rejected(std::string_view text) {
  std::string why;
  if (parse_host_port(text, &why)) return "";
  return why;
}

}  // namespace

TEST_CASE("parse_host_port splits an IPv4 address and port") {
  auto parsed = parse_host_port("127.0.0.1:8080");
  REQUIRE(parsed);
  CHECK(parsed->host == "127.0.0.1");
  CHECK(parsed->port == 8080);
}

TEST_CASE("parse_host_port accepts host names unresolved") {
  auto parsed = parse_host_port("backend-1.internal_zone.example:443");
  REQUIRE(parsed);
  CHECK(parsed->host == "backend-1.internal_zone.example");
  CHECK(parsed->port == 443);
}

TEST_CASE("parse_host_port strips IPv6 brackets") {
  auto parsed = parse_host_port("[::1]:8443");
  REQUIRE(parsed);
  CHECK(parsed->host == "::1");
  CHECK(parsed->port == 8443);
  auto zoned = parse_host_port("[fe80::1%eth0]:80");
  REQUIRE(zoned);
  CHECK(zoned->host == "fe80::1%eth0");
}

TEST_CASE("parse_host_port accepts the port range ends") {
  CHECK(parse_host_port("a:1")->port == 1);
  CHECK(parse_host_port("a:65535")->port == 65535);
}

TEST_CASE("parse_host_port rejects ports out of range") {
  CHECK(why_rejected("a:0") == "port must be between 1 and 65535");
  CHECK(why_rejected("a:65536") == "port must be between 1 and 65535");
  CHECK(why_rejected("a:99999999999999999999") == "port must be between 1 and 65535");
}

TEST_CASE("parse_host_port rejects a missing or bad port") {
  CHECK(why_rejected("localhost") == "missing port (use host:port or [v6addr]:port)");
  CHECK(why_rejected("localhost:") == "missing port");
  CHECK(why_rejected("localhost:http") == "bad port \"http\"");
  CHECK(why_rejected("localhost:-1") == "bad port \"-1\"");
  CHECK(why_rejected("[::1]") == "missing ':port' after ']'");
  CHECK(why_rejected("[::1]443") == "missing ':port' after ']'");
}

TEST_CASE("parse_host_port rejects a missing or bad host") {
  CHECK(why_rejected("") == "empty (use host:port or [v6addr]:port)");
  CHECK(why_rejected(":443") == "missing host");
  CHECK(why_rejected("[]:443") == "missing host");
  CHECK(why_rejected("a b:443") == "bad host \"a b\"");
  CHECK(why_rejected("http://x:443") == "IPv6 addresses need brackets, e.g. [::1]:443");
}

TEST_CASE("parse_host_port requires brackets around IPv6") {
  CHECK(why_rejected("::1:443") == "IPv6 addresses need brackets, e.g. [::1]:443");
  CHECK(why_rejected("[::1:443") == "missing ']' after IPv6 address");
  CHECK(why_rejected("[localhost]:443") == "bad IPv6 address \"localhost\"");
  CHECK(why_rejected("[1.2.3.4]:443") == "bad IPv6 address \"1.2.3.4\"");
  CHECK(why_rejected("[fe80::1%]:443") == "bad IPv6 address \"fe80::1%\"");
}

TEST_CASE("HostPort::str restores the written form") {
  CHECK(HostPort{"127.0.0.1", 80}.str() == "127.0.0.1:80");
  CHECK(HostPort{"::1", 443}.str() == "[::1]:443");
  CHECK(HostPort{"localhost", 65535}.str() == "localhost:65535");
  for (const char* text : {"0.0.0.0:8443", "[::]:8443", "[fe80::1%eth0]:80", "example.com:1"}) {
    CAPTURE(text);
    CHECK(parse_host_port(text)->str() == text);
  }
}
