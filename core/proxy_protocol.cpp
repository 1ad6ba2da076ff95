// PROXY protocol v1 and v2 (haproxy.org's proxy-protocol.txt): encoding and strict parsing.
#include "core/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cstring>

namespace ferry::proxy {
namespace {

constexpr std::array<uint8_t, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kV2FixedLength = 16;  // signature, ver_cmd, fam, len

constexpr uint8_t kCmdLocal = 0x20;  // version 2, LOCAL
constexpr uint8_t kCmdProxy = 0x21;  // version 2, PROXY

constexpr uint8_t kFamUnspec = 0x00;
constexpr uint8_t kFamTcp4 = 0x11;
constexpr uint8_t kFamUdp4 = 0x12;
constexpr uint8_t kFamTcp6 = 0x21;
constexpr uint8_t kFamUdp6 = 0x22;
constexpr uint8_t kFamUnixStream = 0x31;
constexpr uint8_t kFamUnixDgram = 0x32;

constexpr size_t kIpv4Block = 12;  // src addr, dst addr, src port, dst port
constexpr size_t kIpv6Block = 36;
constexpr size_t kUnixBlock = 216;  // two 108-byte paths

constexpr uint8_t kTypeAlpn = 0x01;
constexpr uint8_t kTypeAuthority = 0x02;
constexpr uint8_t kTypeCrc32c = 0x03;
constexpr uint8_t kTypeUniqueId = 0x05;
constexpr uint8_t kTypeSsl = 0x20;

constexpr size_t kMaxUniqueId = 128;

constexpr uint8_t kClientSsl = 0x01;
constexpr uint8_t kClientCertConn = 0x02;
constexpr uint8_t kClientCertSess = 0x04;
constexpr size_t kSslFixed = 5;  // client flags, verify

constexpr uint8_t kSubtypeVersion = 0x21;
constexpr uint8_t kSubtypeCn = 0x22;
constexpr uint8_t kSubtypeCipher = 0x23;
constexpr uint8_t kSubtypeSigAlg = 0x24;
constexpr uint8_t kSubtypeKeyAlg = 0x25;

// The longest v1 address texts: "255.255.255.255" and an IPv6 address with an embedded IPv4.
constexpr size_t kMaxIpv4Text = 15;
constexpr size_t kMaxIpv6Text = 45;

// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), as PP2_TYPE_CRC32C uses.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// Feeds `len` bytes into a running CRC32c state (start with 0xFFFFFFFF, finish with ~state).
uint32_t crc32c_update(uint32_t state, const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) state = (state >> 8) ^ kCrc32cTable[(state ^ data[i]) & 0xFF];
  return state;
}

uint16_t read_u16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

uint32_t read_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void put_u16(std::string& out, size_t value) {
  out.push_back(static_cast<char>((value >> 8) & 0xFF));
  out.push_back(static_cast<char>(value & 0xFF));
}

void put_u32(std::string& out, uint32_t value) {
  put_u16(out, value >> 16);
  put_u16(out, value & 0xFFFF);
}

void put_tlv(std::string& out, uint8_t type, std::string_view value) {
  out.push_back(static_cast<char>(type));
  put_u16(out, value.size());
  out.append(value);
}

// A TLV whose value is a string, cut to kMaxV2StringLength.
void put_string_tlv(std::string& out, uint8_t type, std::string_view value) {
  if (!value.empty()) put_tlv(out, type, value.substr(0, kMaxV2StringLength));
}

std::string hex_byte(uint8_t b) {
  constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 0xF];
}

ParseResult fail(std::string why) {
  ParseResult result;
  result.status = ParseStatus::invalid;
  result.error = std::move(why);
  return result;
}

ParseResult success(size_t consumed, Header header) {
  ParseResult result;
  result.status = ParseStatus::ok;
  result.consumed = consumed;
  result.header = std::move(header);
  return result;
}

const sockaddr_in& as_in(const sockaddr_storage& ss) {
  return *reinterpret_cast<const sockaddr_in*>(&ss);
}
const sockaddr_in6& as_in6(const sockaddr_storage& ss) {
  return *reinterpret_cast<const sockaddr_in6*>(&ss);
}
sockaddr_in& as_in(sockaddr_storage& ss) {
  return *reinterpret_cast<sockaddr_in*>(&ss);
}
sockaddr_in6& as_in6(sockaddr_storage& ss) {
  return *reinterpret_cast<sockaddr_in6*>(&ss);
}

// The family both addresses share if it is AF_INET or AF_INET6, else AF_UNSPEC.
int common_ip_family(const Header& h) {
  const int family = h.src.ss_family;
  if (family != h.dst.ss_family) return AF_UNSPEC;
  return family == AF_INET || family == AF_INET6 ? family : AF_UNSPEC;
}

std::string address_text(const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &as_in(ss).sin_addr, text, sizeof text);
  } else {
    inet_ntop(AF_INET6, &as_in6(ss).sin6_addr, text, sizeof text);
  }
  return text;
}

uint16_t port_of(const sockaddr_storage& ss) {
  return ntohs(ss.ss_family == AF_INET ? as_in(ss).sin_port : as_in6(ss).sin6_port);
}

// ---- v1 ------------------------------------------------------------------------------------

// True if `have` can still become `want`, or already starts with it.
bool agrees(std::string_view have, std::string_view want) {
  const size_t n = std::min(have.size(), want.size());
  return have.substr(0, n) == want.substr(0, n);
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// True if `text` is a dotted quad or the start of one: at most four decimal groups of 0..255
// without leading zeros; only the last may still be empty.
bool ipv4_prefix_ok(std::string_view text) {
  if (text.size() > kMaxIpv4Text) return false;
  int groups = 1;
  size_t digits = 0;
  unsigned value = 0;
  char first = 0;
  for (char c : text) {
    if (c == '.') {
      if (digits == 0 || ++groups > 4) return false;
      digits = 0;
      value = 0;
    } else if (is_digit(c)) {
      if (digits == 0) first = c;
      if (++digits > 1 && first == '0') return false;
      value = value * 10 + static_cast<unsigned>(c - '0');
      if (value > 255) return false;
    } else {
      return false;
    }
  }
  return true;
}

// True if `text` is the start of an IPv6 address inet_pton could accept (the complete address is
// checked by inet_pton): hex groups of at most four digits, one "::" at most, no more than eight
// groups, and an optional dotted quad in place of the last two.
bool ipv6_prefix_ok(std::string_view text) {
  if (text.size() > kMaxIpv6Text) return false;
  int groups = 0;  // groups ended by ':'
  size_t digits = 0;
  bool double_colon = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const int gap = double_colon ? 1 : 0;  // "::" stands for at least one group
    if (is_hex(c)) {
      if (++digits > 4 || groups + gap + 1 > 8) return false;
    } else if (c == ':') {
      if (i == 0) {
        if (text.size() > 1 && text[1] != ':') return false;
      } else if (text[i - 1] == ':') {
        if (double_colon || (i >= 2 && text[i - 2] == ':')) return false;
        double_colon = true;
        if (groups + 1 > 8) return false;
      } else {
        ++groups;
        digits = 0;
        if (groups + gap + 1 > 8) return false;  // a group must follow
      }
    } else if (c == '.') {
      // The current group was the first number of an embedded IPv4 address, which takes two
      // groups' room and must come last.
      const std::string_view v4 = text.substr(i - digits);
      if (double_colon ? groups + 1 + 2 > 8 : groups != 6) return false;
      return ipv4_prefix_ok(v4);
    } else {
      return false;
    }
  }
  return true;
}

// True if `text` is a port or the start of one: decimal 0..65535, no leading zeros.
bool port_prefix_ok(std::string_view text) {
  if (text.size() > 5) return false;
  if (text.size() > 1 && text[0] == '0') return false;
  unsigned value = 0;
  for (char c : text) {
    if (!is_digit(c)) return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535;
}

// One v1 address field into `out`; false if it is not an address of `family`.
bool parse_v1_address(std::string_view text, int family, sockaddr_storage& out) {
  if (text.empty() || text.size() > kMaxIpv6Text) return false;
  const std::string copy(text);
  if (family == AF_INET) {
    if (!ipv4_prefix_ok(text)) return false;
    sockaddr_in& sin = as_in(out);
    sin.sin_family = AF_INET;
    return inet_pton(AF_INET, copy.c_str(), &sin.sin_addr) == 1;
  }
  if (!ipv6_prefix_ok(text)) return false;
  sockaddr_in6& sin6 = as_in6(out);
  sin6.sin6_family = AF_INET6;
  return inet_pton(AF_INET6, copy.c_str(), &sin6.sin6_addr) == 1;
}

bool parse_v1_port(std::string_view text, sockaddr_storage& out) {
  if (text.empty() || !port_prefix_ok(text)) return false;
  unsigned value = 0;
  for (char c : text) value = value * 10 + static_cast<unsigned>(c - '0');
  const uint16_t port = htons(static_cast<uint16_t>(value));
  if (out.ss_family == AF_INET) {
    as_in(out).sin_port = port;
  } else {
    as_in6(out).sin6_port = port;
  }
  return true;
}

ParseResult parse_v1(const uint8_t* data, size_t len) {
  // Only the first 107 bytes can hold a header; if they all arrived, more will not help.
  const std::string_view text(reinterpret_cast<const char*>(data), std::min(len, kMaxV1Length));
  const bool can_grow = len < kMaxV1Length;
  auto need_more = [&]() {
    return can_grow ? ParseResult{} : fail("v1: no CRLF within 107 bytes");
  };

  constexpr std::string_view kProxy = "PROXY ";
  if (!agrees(text, kProxy)) return fail("not a PROXY protocol header");
  if (text.size() < kProxy.size()) return need_more();
  const std::string_view rest = text.substr(kProxy.size());

  constexpr std::string_view kTcp4 = "TCP4 ";
  constexpr std::string_view kTcp6 = "TCP6 ";
  constexpr std::string_view kUnknown = "UNKNOWN";
  if (!agrees(rest, kTcp4) && !agrees(rest, kTcp6) && !agrees(rest, kUnknown)) {
    return fail("v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)");
  }

  if (rest.starts_with(kUnknown)) {
    // "PROXY UNKNOWN" then CRLF, or a space and anything the receiver ignores up to CRLF.
    const std::string_view tail = rest.substr(kUnknown.size());
    if (tail.empty()) return need_more();
    if (tail[0] != '\r' && tail[0] != ' ') return fail("v1: unknown protocol");
    const size_t end = tail.find_first_of("\r\n");
    if (end == std::string_view::npos) return need_more();
    if (tail[end] == '\n') return fail("v1: LF without CR");
    if (end + 1 == tail.size()) return need_more();
    if (tail[end + 1] != '\n') return fail("v1: CR without LF");
    return success(kProxy.size() + kUnknown.size() + end + 2, Header{});
  }
  const bool tcp4 = rest.starts_with(kTcp4);
  if (!tcp4 && !rest.starts_with(kTcp6)) return need_more();  // still a prefix of one of the three

  const int family = tcp4 ? AF_INET : AF_INET6;
  std::string_view fields = rest.substr(kTcp4.size());
  size_t offset = kProxy.size() + kTcp4.size();
  Header header;

  // src SP dst SP sport SP dport CRLF
  static constexpr const char* kNames[] = {"source address", "destination address", "source port",
                                           "destination port"};
  for (int i = 0; i < 4; ++i) {
    const bool is_address = i < 2;
    const char terminator = i < 3 ? ' ' : '\r';
    const size_t end = fields.find_first_of(" \r\n");
    if (end == std::string_view::npos) {
      const bool plausible = !is_address         ? port_prefix_ok(fields)
                             : family == AF_INET ? ipv4_prefix_ok(fields)
                                                 : ipv6_prefix_ok(fields);
      if (!plausible) return fail(std::string("v1: bad ") + kNames[i]);
      return need_more();
    }
    const std::string_view token = fields.substr(0, end);
    sockaddr_storage& addr = i % 2 == 0 ? header.src : header.dst;
    const bool good =
        is_address ? parse_v1_address(token, family, addr) : parse_v1_port(token, addr);
    if (!good) return fail(std::string("v1: bad ") + kNames[i]);
    if (fields[end] != terminator) {
      return fail(i < 3 ? "v1: expected one space after the " + std::string(kNames[i])
                        : std::string("v1: expected CRLF after the destination port"));
    }
    fields = fields.substr(end + 1);
    offset += end + 1;
  }
  if (fields.empty()) return need_more();
  if (fields[0] != '\n') return fail("v1: CR without LF");
  return success(offset + 1, std::move(header));
}

// ---- v2 ------------------------------------------------------------------------------------

// The PP2_TYPE_SSL value: flags, verify, then sub-TLVs that tile the rest exactly.
bool parse_ssl_tlv(const uint8_t* value, size_t len, Header& out, std::string& why) {
  if (len < kSslFixed) {
    why = "v2: SSL TLV shorter than 5 bytes";
    return false;
  }
  SslInfo ssl;
  const uint8_t client = value[0];
  ssl.client_cert_conn = (client & kClientCertConn) != 0;
  ssl.client_cert_sess = (client & kClientCertSess) != 0;
  ssl.verify = read_u32(value + 1);

  std::bitset<256> seen;
  size_t pos = kSslFixed;
  while (pos < len) {
    if (len - pos < 3) {
      why = "v2: truncated sub-TLV in the SSL TLV";
      return false;
    }
    const uint8_t type = value[pos];
    const size_t n = read_u16(value + pos + 1);
    pos += 3;
    if (n > len - pos) {
      why = "v2: sub-TLV " + hex_byte(type) + " overruns the SSL TLV";
      return false;
    }
    const std::string text(reinterpret_cast<const char*>(value + pos), n);
    pos += n;
    if (type < kSubtypeVersion || type > kSubtypeKeyAlg) continue;  // unknown: skipped
    if (seen[type]) {
      why = "v2: repeated sub-TLV " + hex_byte(type) + " in the SSL TLV";
      return false;
    }
    seen[type] = true;
    switch (type) {
      case kSubtypeVersion:
        ssl.version = text;
        break;
      case kSubtypeCn:
        ssl.cn = text;
        break;
      case kSubtypeCipher:
        ssl.cipher = text;
        break;
      case kSubtypeSigAlg:
        ssl.sig_alg = text;
        break;
      case kSubtypeKeyAlg:
        ssl.key_alg = text;
        break;
    }
  }
  // Without PP2_CLIENT_SSL the client did not use TLS: there are no TLS facts to report.
  if ((client & kClientSsl) != 0) out.ssl = std::move(ssl);
  return true;
}

// The TLVs between `begin` and `end` of the header `header` (`header_len` bytes).
bool parse_tlvs(const uint8_t* header, size_t header_len, size_t begin, Header& out,
                std::string& why) {
  std::bitset<256> seen;
  size_t pos = begin;
  while (pos < header_len) {
    if (header_len - pos < 3) {
      why = "v2: truncated TLV";
      return false;
    }
    const uint8_t type = header[pos];
    const size_t n = read_u16(header + pos + 1);
    const size_t value_pos = pos + 3;
    if (n > header_len - value_pos) {
      why = "v2: TLV " + hex_byte(type) + " overruns the header";
      return false;
    }
    const uint8_t* value = header + value_pos;
    pos = value_pos + n;

    const bool decoded = type == kTypeAlpn || type == kTypeAuthority || type == kTypeCrc32c ||
                         type == kTypeUniqueId || type == kTypeSsl;
    if (decoded && seen[type]) {
      why = "v2: repeated TLV " + hex_byte(type);
      return false;
    }
    seen[type] = true;
    switch (type) {
      case kTypeAlpn:
        out.alpn.assign(reinterpret_cast<const char*>(value), n);
        break;
      case kTypeAuthority:
        out.authority.assign(reinterpret_cast<const char*>(value), n);
        break;
      case kTypeCrc32c: {
        if (n != 4) {
          why = "v2: CRC32C TLV is not 4 bytes";
          return false;
        }
        // Over the whole header with the checksum field itself read as zeros.
        constexpr uint8_t kZeros[4] = {};
        uint32_t state = crc32c_update(0xFFFFFFFFu, header, value_pos);
        state = crc32c_update(state, kZeros, 4);
        state = crc32c_update(state, value + 4, header_len - value_pos - 4);
        if (~state != read_u32(value)) {
          why = "v2: CRC32C mismatch";
          return false;
        }
        break;
      }
      case kTypeUniqueId:
        if (n > kMaxUniqueId) {
          why = "v2: UNIQUE_ID TLV longer than 128 bytes";
          return false;
        }
        break;
      case kTypeSsl:
        if (!parse_ssl_tlv(value, n, out, why)) return false;
        break;
      default:  // NOOP, NETNS, custom, experimental and unassigned types
        break;
    }
  }
  return true;
}

ParseResult parse_v2(const uint8_t* data, size_t len) {
  const size_t sig_len = std::min(len, kV2Signature.size());
  if (std::memcmp(data, kV2Signature.data(), sig_len) != 0) {
    return fail("not a PROXY protocol header");
  }
  if (len <= kV2Signature.size()) return {};

  const uint8_t ver_cmd = data[12];
  if ((ver_cmd & 0xF0) != 0x20)
    return fail("v2: unsupported version " + hex_byte(static_cast<uint8_t>(ver_cmd >> 4)));
  if (ver_cmd != kCmdLocal && ver_cmd != kCmdProxy) {
    return fail("v2: unknown command " + hex_byte(static_cast<uint8_t>(ver_cmd & 0x0F)));
  }
  const bool local = ver_cmd == kCmdLocal;
  if (len < 14) return {};

  const uint8_t fam = data[13];
  size_t block = 0;
  switch (fam) {
    case kFamUnspec:
      block = 0;
      break;
    case kFamTcp4:
      block = kIpv4Block;
      break;
    case kFamTcp6:
      block = kIpv6Block;
      break;
    case kFamUnixStream:
      block = kUnixBlock;
      break;
    case kFamUdp4:
    case kFamUdp6:
    case kFamUnixDgram:
      return fail("v2: datagram transport " + hex_byte(fam) + " not supported");
    default:
      return fail("v2: unknown address family " + hex_byte(fam));
  }
  if (len < kV2FixedLength) return {};

  const size_t body = read_u16(data + 14);
  const size_t total = kV2FixedLength + body;
  if (total > kMaxV2Length) return fail("v2: header longer than " + std::to_string(kMaxV2Length));
  if (body < block) return fail("v2: length too short for the address block");
  if (len < total) return {};

  Header header;
  header.local = local;
  const uint8_t* addr = data + kV2FixedLength;
  if (!local && fam == kFamTcp4) {
    sockaddr_in& src = as_in(header.src);
    sockaddr_in& dst = as_in(header.dst);
    src.sin_family = dst.sin_family = AF_INET;
    std::memcpy(&src.sin_addr, addr, 4);
    std::memcpy(&dst.sin_addr, addr + 4, 4);
    std::memcpy(&src.sin_port, addr + 8, 2);
    std::memcpy(&dst.sin_port, addr + 10, 2);
  } else if (!local && fam == kFamTcp6) {
    sockaddr_in6& src = as_in6(header.src);
    sockaddr_in6& dst = as_in6(header.dst);
    src.sin6_family = dst.sin6_family = AF_INET6;
    std::memcpy(&src.sin6_addr, addr, 16);
    std::memcpy(&dst.sin6_addr, addr + 16, 16);
    std::memcpy(&src.sin6_port, addr + 32, 2);
    std::memcpy(&dst.sin6_port, addr + 34, 2);
  }
  // LOCAL, UNSPEC and AF_UNIX leave both addresses AF_UNSPEC (zeroed).

  std::string why;
  if (!parse_tlvs(data, total, kV2FixedLength + block, header, why)) return fail(why);
  return success(total, std::move(header));
}

}  // namespace

std::string encode_v1(const Header& h) {
  const int family = common_ip_family(h);
  if (family == AF_UNSPEC) return "PROXY UNKNOWN\r\n";
  std::string out = family == AF_INET ? "PROXY TCP4 " : "PROXY TCP6 ";
  out += address_text(h.src) + ' ' + address_text(h.dst) + ' ';
  out += std::to_string(port_of(h.src)) + ' ' + std::to_string(port_of(h.dst)) + "\r\n";
  return out;
}

std::string encode_v2(const Header& h) {
  std::string out(reinterpret_cast<const char*>(kV2Signature.data()), kV2Signature.size());
  out.push_back(static_cast<char>(h.local ? kCmdLocal : kCmdProxy));
  const int family = h.local ? AF_UNSPEC : common_ip_family(h);
  if (family == AF_INET) {
    out.push_back(static_cast<char>(kFamTcp4));
    put_u16(out, 0);  // length, filled in below
    const sockaddr_in& src = as_in(h.src);
    const sockaddr_in& dst = as_in(h.dst);
    out.append(reinterpret_cast<const char*>(&src.sin_addr), 4);
    out.append(reinterpret_cast<const char*>(&dst.sin_addr), 4);
    out.append(reinterpret_cast<const char*>(&src.sin_port), 2);  // already network order
    out.append(reinterpret_cast<const char*>(&dst.sin_port), 2);
  } else if (family == AF_INET6) {
    out.push_back(static_cast<char>(kFamTcp6));
    put_u16(out, 0);
    const sockaddr_in6& src = as_in6(h.src);
    const sockaddr_in6& dst = as_in6(h.dst);
    out.append(reinterpret_cast<const char*>(&src.sin6_addr), 16);
    out.append(reinterpret_cast<const char*>(&dst.sin6_addr), 16);
    out.append(reinterpret_cast<const char*>(&src.sin6_port), 2);
    out.append(reinterpret_cast<const char*>(&dst.sin6_port), 2);
  } else {
    out.push_back(static_cast<char>(kFamUnspec));
    put_u16(out, 0);
  }

  put_string_tlv(out, kTypeAlpn, h.alpn);
  put_string_tlv(out, kTypeAuthority, h.authority);
  if (h.ssl) {
    const SslInfo& ssl = *h.ssl;
    std::string value;
    uint8_t client = kClientSsl;
    if (ssl.client_cert_conn) client |= kClientCertConn;
    if (ssl.client_cert_sess) client |= kClientCertSess;
    value.push_back(static_cast<char>(client));
    put_u32(value, ssl.verify);
    put_string_tlv(value, kSubtypeVersion, ssl.version);
    put_string_tlv(value, kSubtypeCn, ssl.cn);
    put_string_tlv(value, kSubtypeCipher, ssl.cipher);
    put_string_tlv(value, kSubtypeSigAlg, ssl.sig_alg);
    put_string_tlv(value, kSubtypeKeyAlg, ssl.key_alg);
    put_tlv(out, kTypeSsl, value);
  }

  const size_t body = out.size() - kV2FixedLength;
  out[14] = static_cast<char>(body >> 8);
  out[15] = static_cast<char>(body & 0xFF);
  return out;
}

// The largest header encode_v2 can build still parses.
static_assert(kV2FixedLength + kIpv6Block + 2 * (3 + kMaxV2StringLength) + 3 + kSslFixed +
                  5 * (3 + kMaxV2StringLength) <=
              kMaxV2Length);

ParseResult parse(const uint8_t* data, size_t len) {
  if (len == 0) return {};
  if (data[0] == 'P') return parse_v1(data, len);
  if (data[0] == kV2Signature[0]) return parse_v2(data, len);
  return fail("not a PROXY protocol header");
}

}  // namespace ferry::proxy
