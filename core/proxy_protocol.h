#pragma once
// The PROXY protocol (haproxy.org's proxy-protocol.txt), versions 1 and 2: building the header
// ferry sends to a backend before any payload, and strictly parsing the one a load balancer
// sends ferry before the TLS handshake. No I/O here: bytes in, bytes out.

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::proxy {

// The TLS facts carried by v2's PP2_TYPE_SSL TLV (0x20) and its sub-TLVs.
struct SslInfo {
  bool client_cert_conn = false;  // PP2_CLIENT_CERT_CONN: a client certificate on this connection
  bool client_cert_sess = false;  // PP2_CLIENT_CERT_SESS: ... on this TLS session (also resumed)
  uint32_t verify = 0;            // 0 = the client presented a certificate and it verified
  std::string version;            // PP2_SUBTYPE_SSL_VERSION (0x21), e.g. "TLSv1.3"
  std::string cn;                 // PP2_SUBTYPE_SSL_CN (0x22): the client certificate's CN
  std::string cipher;             // PP2_SUBTYPE_SSL_CIPHER (0x23), e.g. "TLS_AES_128_GCM_SHA256"
  std::string sig_alg;            // PP2_SUBTYPE_SSL_SIG_ALG (0x24), e.g. "ecdsa-with-SHA256"
  std::string key_alg;            // PP2_SUBTYPE_SSL_KEY_ALG (0x25), e.g. "EC256" / "RSA2048"
};

// What a header says. Addresses are AF_INET or AF_INET6 (same family for both), or
// AF_UNSPEC when the connection is not TCP over IP (v1 "UNKNOWN", v2 AF_UNSPEC or LOCAL).
// parse leaves `ssl` nullopt for an SSL TLV without PP2_CLIENT_SSL (the client did not use TLS).
struct Header {
  sockaddr_storage src{};      // the client
  sockaddr_storage dst{};      // the address the client connected to
  bool local = false;          // v2 LOCAL command (a health check from the proxy itself)
  std::string alpn;            // PP2_TYPE_ALPN (0x01), empty: absent
  std::string authority;       // PP2_TYPE_AUTHORITY (0x02): the SNI, empty: absent
  std::optional<SslInfo> ssl;  // PP2_TYPE_SSL (0x20); nullopt: absent
};

// Version 1 text header: "PROXY TCP4 src dst sport dport\r\n" (TCP6 for IPv6), or
// "PROXY UNKNOWN\r\n" when src/dst are not IP or their families differ. v1 carries no TLVs.
std::string encode_v1(const Header& h);

// Version 2 binary header, command PROXY (LOCAL when h.local), with the TLVs for every non-empty
// field of `h` in type order: ALPN, AUTHORITY, SSL (flags PP2_CLIENT_SSL plus the cert flags,
// verify, then sub-TLVs 0x21..0x25 for the non-empty strings). A mismatched or non-IP family is
// sent as AF_UNSPEC with no address block. Strings longer than a TLV can hold are truncated.
// LOCAL is always sent as AF_UNSPEC (the receiver ignores its addresses). No CRC32C TLV.
std::string encode_v2(const Header& h);

// "What a TLV can hold" for encode_v2: each string TLV and sub-TLV value is cut to this many
// bytes (ALPN ids and host names are at most 255 bytes), so every encoded header parses.
constexpr size_t kMaxV2StringLength = 255;

enum class ParseStatus {
  incomplete,  // a valid prefix: read more bytes (the caller bounds time and size)
  ok,          // `consumed` bytes form one complete, valid header
  invalid,     // not a PROXY header, or a malformed one: `error` says why
};

struct ParseResult {
  ParseStatus status = ParseStatus::incomplete;
  size_t consumed = 0;  // header length when ok
  Header header;        // when ok
  std::string error;    // when invalid: short, for a log line
};

// The most bytes a header can take that ferry accepts: v1's 107, or v2's 16 + its length, which
// ferry caps at kMaxV2Length (longer is invalid).
constexpr size_t kMaxV1Length = 107;
constexpr size_t kMaxV2Length = 16 + 4096;

// Parse the start of `data` strictly: either version, decided by the first bytes. v1: the exact
// grammar (single spaces, decimal ports without leading zeros, addresses that parse, CRLF within
// 107 bytes). v2: the 12-byte signature, version 2, command LOCAL or PROXY, a known family and
// protocol (STREAM, or UNSPEC), an address block that fits the length; TLVs must tile the rest
// exactly (unknown types are skipped; a known type with a bad length is invalid). Never reads past
// `len`; call again with more bytes while it says incomplete.
ParseResult parse(const uint8_t* data, size_t len);

}  // namespace ferry::proxy
