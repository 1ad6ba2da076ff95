#include <arpa/inet.h>
#include <netinet/in.h>

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/proxy_protocol.h"

using ferry::proxy::encode_v1;
using ferry::proxy::encode_v2;
using ferry::proxy::Header;
using ferry::proxy::kMaxV1Length;
using ferry::proxy::kMaxV2Length;
using ferry::proxy::ParseResult;
using ferry::proxy::ParseStatus;
using ferry::proxy::SslInfo;

namespace {

// Raw bytes written out by hand.
std::string b(std::initializer_list<int> bytes) {
  std::string out;
  for (int v : bytes) out.push_back(static_cast<char>(v));
  return out;
}

const std::string kSig =
    b({0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A});

// Parses a copy of `bytes` in a buffer of exactly that size, so that ASan sees any read past it.
ParseResult parse(std::string_view bytes) {
  const std::vector<uint8_t> exact(bytes.begin(), bytes.end());
  return ferry::proxy::parse(exact.data(), exact.size());
}

sockaddr_storage v4(const char* addr, uint16_t port) {
  sockaddr_storage ss{};
  auto& sin = reinterpret_cast<sockaddr_in&>(ss);
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  REQUIRE(inet_pton(AF_INET, addr, &sin.sin_addr) == 1);
  return ss;
}

sockaddr_storage v6(const char* addr, uint16_t port) {
  sockaddr_storage ss{};
  auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(port);
  REQUIRE(inet_pton(AF_INET6, addr, &sin6.sin6_addr) == 1);
  return ss;
}

// "1.2.3.4:80", "[::1]:80" or "unspec".
std::string text(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &sin.sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(sin.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(ss);
    inet_ntop(AF_INET6, &sin6.sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(sin6.sin6_port));
  }
  if (ss.ss_family == AF_UNSPEC) return "unspec";
  return "family " + std::to_string(ss.ss_family);
}

// The IPv4 header with every TLV, and its bytes as the specification lays them out.
Header ipv4_full() {
  Header h;
  h.src = v4("192.0.2.1", 51000);
  h.dst = v4("198.51.100.7", 443);
  h.alpn = "h2";
  h.authority = "example.com";
  SslInfo ssl;
  ssl.client_cert_conn = true;
  ssl.client_cert_sess = true;
  ssl.verify = 0;
  ssl.version = "TLSv1.3";
  ssl.cn = "client";
  ssl.cipher = "TLS_AES_128_GCM_SHA256";
  ssl.sig_alg = "ecdsa-with-SHA256";
  ssl.key_alg = "EC256";
  h.ssl = ssl;
  return h;
}

const std::string kIpv4Full =
    kSig + b({0x21, 0x11}) +                                      // PROXY, TCP4
    b({0x00, 0x6F}) +                                             // 12 + 5 + 14 + 80 = 111
    b({192, 0, 2, 1, 198, 51, 100, 7, 0xC7, 0x38, 0x01, 0xBB}) +  // ports 51000, 443
    b({0x01, 0x00, 0x02}) + "h2" +                                // ALPN
    b({0x02, 0x00, 0x0B}) + "example.com" +                       // AUTHORITY
    b({0x20, 0x00, 0x4D}) +                             // SSL: 5 + 10 + 9 + 25 + 20 + 8 = 77
    b({0x07, 0x00, 0x00, 0x00, 0x00}) +                 // SSL | CERT_CONN | CERT_SESS, verify 0
    b({0x21, 0x00, 0x07}) + "TLSv1.3" +                 // SSL_VERSION
    b({0x22, 0x00, 0x06}) + "client" +                  // SSL_CN
    b({0x23, 0x00, 0x16}) + "TLS_AES_128_GCM_SHA256" +  // SSL_CIPHER
    b({0x24, 0x00, 0x11}) + "ecdsa-with-SHA256" +       // SSL_SIG_ALG
    b({0x25, 0x00, 0x05}) + "EC256";                    // SSL_KEY_ALG

Header ipv6_full() {
  Header h;
  h.src = v6("2001:db8::1", 1234);
  h.dst = v6("2001:db8::2", 8443);
  h.alpn = "http/1.1";
  h.authority = "a.example";
  SslInfo ssl;
  ssl.client_cert_conn = true;
  ssl.verify = 20;
  ssl.version = "TLSv1.2";
  ssl.cn = "Alice";
  ssl.cipher = "ECDHE-RSA-AES128-GCM-SHA256";
  ssl.sig_alg = "sha256WithRSAEncryption";
  ssl.key_alg = "RSA2048";
  h.ssl = ssl;
  return h;
}

const std::string kIpv6Full =
    kSig + b({0x21, 0x21}) +                                              // PROXY, TCP6
    b({0x00, 0x97}) +                                                     // 36 + 11 + 12 + 92 = 151
    b({0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01}) +  // 2001:db8::1
    b({0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02}) +  // 2001:db8::2
    b({0x04, 0xD2, 0x20, 0xFB}) +                                         // ports 1234, 8443
    b({0x01, 0x00, 0x08}) + "http/1.1" +                                  // ALPN
    b({0x02, 0x00, 0x09}) + "a.example" +                                 // AUTHORITY
    b({0x20, 0x00, 0x59}) +                                  // SSL: 5 + 10 + 8 + 30 + 26 + 10 = 89
    b({0x03, 0x00, 0x00, 0x00, 0x14}) +                      // SSL | CERT_CONN, verify 20
    b({0x21, 0x00, 0x07}) + "TLSv1.2" +                      // SSL_VERSION
    b({0x22, 0x00, 0x05}) + "Alice" +                        // SSL_CN
    b({0x23, 0x00, 0x1B}) + "ECDHE-RSA-AES128-GCM-SHA256" +  // SSL_CIPHER
    b({0x24, 0x00, 0x17}) + "sha256WithRSAEncryption" +      // SSL_SIG_ALG
    b({0x25, 0x00, 0x07}) + "RSA2048";                       // SSL_KEY_ALG

// A minimal v2 PROXY TCP4 header (127.0.0.1:1 -> 127.0.0.2:2) followed by `tlvs`.
std::string v2_tcp4(const std::string& tlvs) {
  const size_t body = 12 + tlvs.size();
  return kSig + b({0x21, 0x11, static_cast<int>(body >> 8), static_cast<int>(body & 0xFF)}) +
         b({127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2}) + tlvs;
}

// An SSL TLV with client flags 0x01, verify 0 and `subs` as its sub-TLVs.
std::string ssl_tlv(const std::string& subs) {
  const size_t n = 5 + subs.size();
  return b({0x20, static_cast<int>(n >> 8), static_cast<int>(n & 0xFF), 0x01, 0, 0, 0, 0}) + subs;
}

void check_same(const Header& got, const Header& want) {
  CHECK(text(got.src) == text(want.src));
  CHECK(text(got.dst) == text(want.dst));
  CHECK(got.local == want.local);
  CHECK(got.alpn == want.alpn);
  CHECK(got.authority == want.authority);
  REQUIRE(got.ssl.has_value() == want.ssl.has_value());
  if (!want.ssl) return;
  CHECK(got.ssl->client_cert_conn == want.ssl->client_cert_conn);
  CHECK(got.ssl->client_cert_sess == want.ssl->client_cert_sess);
  CHECK(got.ssl->verify == want.ssl->verify);
  CHECK(got.ssl->version == want.ssl->version);
  CHECK(got.ssl->cn == want.ssl->cn);
  CHECK(got.ssl->cipher == want.ssl->cipher);
  CHECK(got.ssl->sig_alg == want.ssl->sig_alg);
  CHECK(got.ssl->key_alg == want.ssl->key_alg);
}

// The reason parse gives for rejecting `bytes` ("" if it did not).
std::string why_invalid(std::string_view bytes) {
  const ParseResult result = parse(bytes);
  return result.status == ParseStatus::invalid ? result.error : "";
}

}  // namespace

// ---- encode --------------------------------------------------------------------------------

TEST_CASE("proxy encode_v1 writes TCP4 and TCP6 lines") {
  Header h;
  h.src = v4("192.0.2.1", 51000);
  h.dst = v4("198.51.100.7", 443);
  CHECK(encode_v1(h) == "PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n");
  h.src = v6("2001:db8::1", 0);
  h.dst = v6("::ffff:192.0.2.9", 65535);
  CHECK(encode_v1(h) == "PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 0 65535\r\n");
}

TEST_CASE("proxy encode_v1 writes UNKNOWN for non-IP or mixed families") {
  CHECK(encode_v1(Header{}) == "PROXY UNKNOWN\r\n");
  Header mixed;
  mixed.src = v4("192.0.2.1", 1);
  mixed.dst = v6("::1", 2);
  CHECK(encode_v1(mixed) == "PROXY UNKNOWN\r\n");
}

TEST_CASE("proxy encode_v2 writes an IPv4 header with every TLV") {
  CHECK(kIpv4Full.size() == 16 + 111);
  CHECK(encode_v2(ipv4_full()) == kIpv4Full);
}

TEST_CASE("proxy encode_v2 writes an IPv6 header with every TLV") {
  CHECK(kIpv6Full.size() == 16 + 151);
  CHECK(encode_v2(ipv6_full()) == kIpv6Full);
}

TEST_CASE("proxy encode_v2 leaves out empty TLVs and sub-TLVs") {
  Header h;
  h.src = v4("10.0.0.1", 1);
  h.dst = v4("10.0.0.2", 2);
  CHECK(encode_v2(h) == kSig + b({0x21, 0x11, 0x00, 0x0C, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2}));
  SslInfo ssl;
  ssl.verify = 0x01020304;
  ssl.cipher = "X";
  h.ssl = ssl;
  CHECK(encode_v2(h) == kSig + b({0x21, 0x11, 0x00, 0x18, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2}) +
                            b({0x20, 0x00, 0x09, 0x01, 0x01, 0x02, 0x03, 0x04, 0x23, 0x00, 0x01}) +
                            "X");
}

TEST_CASE("proxy encode_v2 sends LOCAL and mixed families as AF_UNSPEC") {
  Header local = ipv4_full();
  local.local = true;
  local.alpn.clear();
  local.authority.clear();
  local.ssl.reset();
  CHECK(encode_v2(local) == kSig + b({0x20, 0x00, 0x00, 0x00}));
  Header mixed;
  mixed.src = v4("192.0.2.1", 1);
  mixed.dst = v6("::1", 2);
  mixed.alpn = "h2";
  CHECK(encode_v2(mixed) == kSig + b({0x21, 0x00, 0x00, 0x05, 0x01, 0x00, 0x02}) + "h2");
}

TEST_CASE("proxy encode_v2 truncates strings to kMaxV2StringLength") {
  Header h;
  h.authority = std::string(300, 'a');
  const std::string out = encode_v2(h);
  CHECK(out == kSig + b({0x21, 0x00, 0x01, 0x02, 0x02, 0x00, 0xFF}) + std::string(255, 'a'));
  const ParseResult parsed = parse(out);
  REQUIRE(parsed.status == ParseStatus::ok);
  CHECK(parsed.header.authority == std::string(255, 'a'));
}

TEST_CASE("proxy encode_v2 of the longest strings still parses") {
  Header h = ipv6_full();
  const std::string long_text(1000, 'x');
  h.alpn = h.authority = h.ssl->version = h.ssl->cn = h.ssl->cipher = long_text;
  h.ssl->sig_alg = h.ssl->key_alg = long_text;
  const std::string out = encode_v2(h);
  CHECK(out.size() <= kMaxV2Length);
  CHECK(parse(out).status == ParseStatus::ok);
}

// ---- round trips ---------------------------------------------------------------------------

TEST_CASE("proxy v1 round-trips through parse") {
  Header h4;
  h4.src = v4("192.0.2.1", 51000);
  h4.dst = v4("198.51.100.7", 443);
  Header h6;
  h6.src = v6("2001:db8::1", 0);
  h6.dst = v6("fe80::abcd", 65535);
  for (const Header& h : {h4, h6, Header{}}) {
    const std::string line = encode_v1(h);
    CAPTURE(line);
    const ParseResult parsed = parse(line);
    REQUIRE(parsed.status == ParseStatus::ok);
    CHECK(parsed.consumed == line.size());
    check_same(parsed.header, h);
  }
}

TEST_CASE("proxy v2 round-trips through parse") {
  Header local;
  local.local = true;
  local.authority = "health.example";
  Header plain;
  plain.src = v6("::ffff:192.0.2.1", 7);
  plain.dst = v6("::1", 8);
  for (const Header& h : {ipv4_full(), ipv6_full(), local, plain, Header{}}) {
    const std::string bytes = encode_v2(h);
    const ParseResult parsed = parse(bytes);
    REQUIRE(parsed.status == ParseStatus::ok);
    CHECK(parsed.consumed == bytes.size());
    check_same(parsed.header, h);
  }
}

TEST_CASE("proxy parse decodes the hand-written v2 headers") {
  const ParseResult r4 = parse(kIpv4Full);
  REQUIRE(r4.status == ParseStatus::ok);
  check_same(r4.header, ipv4_full());
  const ParseResult r6 = parse(kIpv6Full);
  REQUIRE(r6.status == ParseStatus::ok);
  check_same(r6.header, ipv6_full());
}

TEST_CASE("proxy parse does not consume the bytes after the header") {
  const std::string payload = b({0x16, 0x03, 0x01, 0x00, 0x05}) + "GET / HTTP/1.1\r\n";
  for (const std::string& header :
       {kIpv4Full, kIpv6Full, std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        std::string("PROXY UNKNOWN ignored\r\n")}) {
    const ParseResult parsed = parse(header + payload);
    REQUIRE(parsed.status == ParseStatus::ok);
    CHECK(parsed.consumed == header.size());
  }
}

// ---- incremental parsing -------------------------------------------------------------------

TEST_CASE("proxy parse says incomplete for every prefix of a valid header") {
  const std::vector<std::string> headers = {
      kIpv4Full,
      kIpv6Full,
      kSig + b({0x20, 0x00, 0x00, 0x00}),
      "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ::1 1 2\r\n",
      "PROXY UNKNOWN\r\n",
      "PROXY UNKNOWN TCP4 1.2.3.4 whatever\r\n",
      "PROXY UNKNOWN " + std::string(kMaxV1Length - 16, 'x') + "\r\n",
  };
  for (const std::string& header : headers) {
    CAPTURE(header);
    for (size_t n = 0; n < header.size(); ++n) {
      CAPTURE(n);
      CHECK(parse(std::string_view(header).substr(0, n)).status == ParseStatus::incomplete);
    }
    const ParseResult full = parse(header);
    CHECK(full.status == ParseStatus::ok);
    CHECK(full.consumed == header.size());
  }
}

TEST_CASE("proxy parse accepts every prefix of the IPv6 address forms") {
  for (const char* addr :
       {"::", "::1", "1::", "::ffff:192.0.2.1", "::1.2.3.4", "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::8", "1:2:3:4::5:1.2.3.4",
        "fe80::abcd:EF01", "2001:db8:0:0:1:0:0:1", "0000:0000::0"}) {
    const std::string line = std::string("PROXY TCP6 ") + addr + " " + addr + " 443 0\r\n";
    CAPTURE(line);
    for (size_t n = 0; n < line.size(); ++n) {
      CAPTURE(n);
      CHECK(parse(std::string_view(line).substr(0, n)).status == ParseStatus::incomplete);
    }
    CHECK(parse(line).status == ParseStatus::ok);
  }
}

TEST_CASE("proxy parse rejects as soon as the bytes cannot become a header") {
  for (const std::string& prefix : {
           b({0x16}),                          // a TLS ClientHello
           b({0x16, 0x03, 0x01, 0x02, 0x00}),  //
           std::string("GET / HTTP/1.1"),      //
           std::string("PROXX"),               //
           std::string("PROXY  "),             // double space
           std::string("PROXY TCP5"),          //
           std::string("PROXY UNKNOWNX"),      //
           std::string("PROXY TCP4 1.2.3.4567"),
           std::string("PROXY TCP4 01"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 123456"),
           std::string("PROXY TCP4 1.2.3.4 5.6.7.8 00"),
           std::string("PROXY TCP4 ::1"),
           std::string("PROXY TCP6 1.2.3.4"),
           std::string("PROXY TCP6 1::2::"),
           std::string("PROXY TCP6 :1"),
           std::string("PROXY TCP6 12345"),
           std::string("PROXY TCP6 1:2:3:4:5:6:7:8:"),
           kSig.substr(0, 5) + "x",
           kSig + b({0x11}),  // version 1
           kSig + b({0x21, 0x12}),
       }) {
    CAPTURE(prefix);
    CHECK(parse(prefix).status == ParseStatus::invalid);
  }
}

TEST_CASE("proxy parse survives every single-bit flip of a valid header") {
  for (const std::string& header :
       {kIpv4Full, kIpv6Full, std::string("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n")}) {
    for (size_t i = 0; i < header.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string mutated = header;
        mutated[i] = static_cast<char>(mutated[i] ^ (1 << bit));
        const ParseResult r = parse(mutated);
        if (r.status == ParseStatus::ok) CHECK(r.consumed <= mutated.size());
        if (r.status == ParseStatus::invalid) CHECK_FALSE(r.error.empty());
      }
    }
  }
}

// ---- v1 errors -----------------------------------------------------------------------------

TEST_CASE("proxy parse rejects malformed v1 lines") {
  struct Case {
    std::string line;
    std::string error;
  };
  const Case cases[] = {
      {"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
       "v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)"},
      {"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1: bad destination address"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "v1: bad source port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "v1: bad destination port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1: expected CRLF after the destination port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1: bad source port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "v1: bad destination port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1: bad source port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1: bad source port"},
      {"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "v1: bad destination address"},
      {"PROXY TCP4 ::1 ::1 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP6 ::1 1::2::3 1 2\r\n", "v1: bad destination address"},
      {"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1: bad source address"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1: expected one space after the source port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1: expected CRLF after the destination port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "v1: CR without LF"},
      {"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"},
      {"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
       "v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)"},
      {"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
       "v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)"},
      {"PROXY UNKNOWN\n", "v1: unknown protocol"},
      {"PROXY UNKNOWN x\nx\r\n", "v1: LF without CR"},
      {"PROXY UNKNOWN x\rx\r\n", "v1: CR without LF"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.line);
    CHECK(why_invalid(c.line) == c.error);
  }
}

TEST_CASE("proxy parse limits a v1 line to 107 bytes including CRLF") {
  const std::string at_limit = "PROXY UNKNOWN " + std::string(kMaxV1Length - 16, 'x') + "\r\n";
  REQUIRE(at_limit.size() == kMaxV1Length);
  CHECK(parse(at_limit).status == ParseStatus::ok);
  const std::string over = "PROXY UNKNOWN " + std::string(kMaxV1Length - 15, 'x') + "\r\n";
  CHECK(why_invalid(over) == "v1: no CRLF within 107 bytes");
  // The 107th byte arrived and it is not the LF: no need to wait for more.
  CHECK(why_invalid(over.substr(0, kMaxV1Length)) == "v1: no CRLF within 107 bytes");
  CHECK(parse(over.substr(0, kMaxV1Length - 1)).status == ParseStatus::incomplete);
}

TEST_CASE("proxy parse reads v1 addresses and ports in network order") {
  const ParseResult r = parse("PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n");
  REQUIRE(r.status == ParseStatus::ok);
  CHECK(text(r.header.src) == "[2001:db8::1]:0");
  CHECK(text(r.header.dst) == "[::ffff:10.0.0.1]:65535");
  const auto& dst = reinterpret_cast<const sockaddr_in6&>(r.header.dst);
  CHECK(dst.sin6_port == htons(65535));
  const ParseResult unknown = parse("PROXY UNKNOWN\r\n");
  REQUIRE(unknown.status == ParseStatus::ok);
  CHECK(unknown.header.src.ss_family == AF_UNSPEC);
  CHECK(unknown.header.dst.ss_family == AF_UNSPEC);
  CHECK_FALSE(unknown.header.local);
}

// ---- v2 errors and edge cases --------------------------------------------------------------

TEST_CASE("proxy parse rejects a bad v2 signature, version, command or family") {
  std::string bad_sig = kIpv4Full;
  bad_sig[6] = 0x0B;
  CHECK(why_invalid(bad_sig) == "not a PROXY protocol header");
  struct Case {
    int ver_cmd;
    int fam;
    std::string error;
  };
  const Case cases[] = {
      {0x11, 0x11, "v2: unsupported version 0x01"},
      {0x31, 0x11, "v2: unsupported version 0x03"},
      {0x22, 0x11, "v2: unknown command 0x02"},
      {0x2F, 0x11, "v2: unknown command 0x0f"},
      {0x21, 0x12, "v2: datagram transport 0x12 not supported"},
      {0x21, 0x22, "v2: datagram transport 0x22 not supported"},
      {0x21, 0x32, "v2: datagram transport 0x32 not supported"},
      {0x20, 0x12, "v2: datagram transport 0x12 not supported"},
      {0x21, 0x41, "v2: unknown address family 0x41"},
      {0x21, 0x13, "v2: unknown address family 0x13"},
      {0x21, 0x10, "v2: unknown address family 0x10"},
      {0x21, 0x01, "v2: unknown address family 0x01"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.ver_cmd);
    CAPTURE(c.fam);
    // Rejected from the byte that is wrong, before the length arrives.
    CHECK(why_invalid(kSig + b({c.ver_cmd, c.fam})) == c.error);
  }
}

TEST_CASE("proxy parse rejects v2 lengths that overflow the cap or the address block") {
  CHECK(why_invalid(kSig + b({0x21, 0x11, 0xFF, 0xFF})) == "v2: header longer than 4112");
  CHECK(why_invalid(kSig + b({0x21, 0x00, 0x10, 0x01})) == "v2: header longer than 4112");
  CHECK(why_invalid(kSig + b({0x21, 0x11, 0x00, 0x0B})) ==
        "v2: length too short for the address block");
  CHECK(why_invalid(kSig + b({0x21, 0x21, 0x00, 0x23})) ==
        "v2: length too short for the address block");
  // Exactly at the cap: 4096 bytes of body (12 address bytes and one NOOP TLV).
  const std::string at_cap = v2_tcp4(b({0x04, 0x0F, 0xF1}) + std::string(4081, '\0'));
  REQUIRE(at_cap.size() == kMaxV2Length);
  CHECK(parse(at_cap).status == ParseStatus::ok);
}

TEST_CASE("proxy parse rejects truncated and overrunning v2 TLVs") {
  const std::string tlvs[] = {
      b({0x04}),
      b({0x04, 0x00}),
      b({0x01, 0x00, 0x03}) + "h2",
      b({0x01, 0x00, 0x02}) + "h2" + b({0x02, 0x00}),
  };
  CHECK(why_invalid(v2_tcp4(tlvs[0])) == "v2: truncated TLV");
  CHECK(why_invalid(v2_tcp4(tlvs[1])) == "v2: truncated TLV");
  CHECK(why_invalid(v2_tcp4(tlvs[2])) == "v2: TLV 0x01 overruns the header");
  CHECK(why_invalid(v2_tcp4(tlvs[3])) == "v2: truncated TLV");
}

TEST_CASE("proxy parse requires the SSL sub-TLVs to tile its value") {
  CHECK(why_invalid(v2_tcp4(b({0x20, 0x00, 0x04, 0x01, 0, 0, 0}))) ==
        "v2: SSL TLV shorter than 5 bytes");
  CHECK(why_invalid(v2_tcp4(ssl_tlv(b({0x21, 0x00})))) == "v2: truncated sub-TLV in the SSL TLV");
  CHECK(why_invalid(v2_tcp4(ssl_tlv(b({0x21, 0x00, 0x08}) + "TLSv1.3"))) ==
        "v2: sub-TLV 0x21 overruns the SSL TLV");
  CHECK(why_invalid(v2_tcp4(ssl_tlv(b({0x21, 0x00, 0x01}) + "a" + b({0x21, 0x00, 0x01}) + "b"))) ==
        "v2: repeated sub-TLV 0x21 in the SSL TLV");
  // A sub-TLV running past the SSL TLV but not past the header is still an error.
  const std::string overrun = b({0x20, 0x00, 0x08, 0x01, 0, 0, 0, 0, 0x21, 0x00, 0x03}) + "abc";
  CHECK(why_invalid(v2_tcp4(overrun)) == "v2: sub-TLV 0x21 overruns the SSL TLV");
  // Unknown sub-types are skipped; an empty sub-TLV list is fine.
  const ParseResult ok = parse(v2_tcp4(ssl_tlv(b({0x2F, 0x00, 0x01}) + "z")));
  REQUIRE(ok.status == ParseStatus::ok);
  REQUIRE(ok.header.ssl);
  CHECK(ok.header.ssl->version.empty());
  CHECK(parse(v2_tcp4(ssl_tlv(""))).status == ParseStatus::ok);
}

TEST_CASE("proxy parse reports no TLS facts when PP2_CLIENT_SSL is clear") {
  const ParseResult r = parse(v2_tcp4(b({0x20, 0x00, 0x05, 0x02, 0, 0, 0, 0})));
  REQUIRE(r.status == ParseStatus::ok);
  CHECK_FALSE(r.header.ssl);
}

TEST_CASE("proxy parse verifies a CRC32C TLV") {
  // Checksums computed independently (CRC32c over the header with the field zeroed).
  const std::string crc_last = v2_tcp4(b({0x03, 0x00, 0x04, 0xBA, 0x84, 0x11, 0x57}));
  CHECK(parse(crc_last).status == ParseStatus::ok);
  const std::string crc_first =
      v2_tcp4(b({0x03, 0x00, 0x04, 0x93, 0x8F, 0xE3, 0x16, 0x04, 0x00, 0x01, 0x41}));
  CHECK(parse(crc_first).status == ParseStatus::ok);

  std::string flipped_crc = crc_last;
  flipped_crc.back() ^= 0x01;
  CHECK(why_invalid(flipped_crc) == "v2: CRC32C mismatch");
  std::string flipped_addr = crc_first;
  flipped_addr[16] ^= 0x01;
  CHECK(why_invalid(flipped_addr) == "v2: CRC32C mismatch");
  CHECK(why_invalid(v2_tcp4(b({0x03, 0x00, 0x03, 0, 0, 0}))) == "v2: CRC32C TLV is not 4 bytes");
}

TEST_CASE("proxy parse rejects repeated TLVs it decodes and oversized unique ids") {
  CHECK(why_invalid(v2_tcp4(b({0x01, 0x00, 0x01}) + "a" + b({0x01, 0x00, 0x01}) + "b")) ==
        "v2: repeated TLV 0x01");
  CHECK(why_invalid(v2_tcp4(ssl_tlv("") + ssl_tlv(""))) == "v2: repeated TLV 0x20");
  CHECK(why_invalid(v2_tcp4(b({0x05, 0x00, 0x81}) + std::string(129, 'u'))) ==
        "v2: UNIQUE_ID TLV longer than 128 bytes");
  CHECK(parse(v2_tcp4(b({0x05, 0x00, 0x80}) + std::string(128, 'u'))).status == ParseStatus::ok);
}

TEST_CASE("proxy parse skips NOOP, NETNS, custom and unassigned TLVs") {
  const std::string tlvs = b({0x04, 0x00, 0x00}) + b({0x30, 0x00, 0x03}) + "red" +
                           b({0xE0, 0x00, 0x02, 0xAA, 0xBB}) + b({0x7F, 0x00, 0x00}) +
                           b({0x04, 0x00, 0x02, 0x04, 0x04}) + b({0x02, 0x00, 0x01}) + "x";
  const ParseResult r = parse(v2_tcp4(tlvs));
  REQUIRE(r.status == ParseStatus::ok);
  CHECK(r.header.authority == "x");
  CHECK(text(r.header.src) == "127.0.0.1:1");
  CHECK(text(r.header.dst) == "127.0.0.2:2");
}

TEST_CASE("proxy parse reports LOCAL, UNSPEC and AF_UNIX without addresses") {
  // LOCAL with an IPv4 block: the addresses are ignored, TLVs still read.
  std::string local = v2_tcp4(b({0x02, 0x00, 0x01}) + "h");
  local[12] = 0x20;
  const ParseResult r_local = parse(local);
  REQUIRE(r_local.status == ParseStatus::ok);
  CHECK(r_local.header.local);
  CHECK(r_local.header.src.ss_family == AF_UNSPEC);
  CHECK(r_local.header.dst.ss_family == AF_UNSPEC);
  CHECK(r_local.header.authority == "h");

  const ParseResult r_unspec = parse(kSig + b({0x21, 0x00, 0x00, 0x00}));
  REQUIRE(r_unspec.status == ParseStatus::ok);
  CHECK_FALSE(r_unspec.header.local);
  CHECK(r_unspec.header.src.ss_family == AF_UNSPEC);

  const std::string unix_header = kSig + b({0x21, 0x31, 0x00, 0xD8}) + "/run/a.sock" +
                                  std::string(108 - 11, '\0') + "/run/b.sock" +
                                  std::string(108 - 11, '\0');
  const ParseResult r_unix = parse(unix_header);
  REQUIRE(r_unix.status == ParseStatus::ok);
  CHECK(r_unix.consumed == 16 + 216);
  CHECK(r_unix.header.src.ss_family == AF_UNSPEC);
  CHECK(r_unix.header.dst.ss_family == AF_UNSPEC);
}
