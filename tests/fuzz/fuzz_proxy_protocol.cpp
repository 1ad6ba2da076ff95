// PROXY protocol headers (v1 text and v2 binary) from a hostile load balancer or client:
// proxy::parse must never read past `len`, and what it accepts must survive a round trip through
// ferry's own encoders.
//
// Invariants checked on every input:
//   - ok      => 0 < consumed <= len, consumed within the version's maximum; the same bytes cut
//                to `consumed` parse the same; one byte fewer is `incomplete` (a strict prefix of
//                a valid header is never `invalid` nor `ok`);
//   - invalid => an error message;
//   - ok      => encode_v1 / encode_v2 of the parsed header parse again (ok, consumed = the whole
//                encoding) to the same addresses, and v2 keeps the TLVs (strings cut to
//                kMaxV2StringLength, as encode_v2 documents); encoding is stable.

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/proxy_protocol.h"
#include "tests/fuzz/fuzz_invariant.h"

namespace {

using ferry::proxy::Header;
using ferry::proxy::ParseResult;
using ferry::proxy::ParseStatus;

ParseResult parse(const std::string& bytes) {
  return ferry::proxy::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

bool same_address(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  switch (a.ss_family) {
    case AF_INET: {
      const auto& x = reinterpret_cast<const sockaddr_in&>(a);
      const auto& y = reinterpret_cast<const sockaddr_in&>(b);
      return x.sin_port == y.sin_port &&
             std::memcmp(&x.sin_addr, &y.sin_addr, sizeof x.sin_addr) == 0;
    }
    case AF_INET6: {
      const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
      const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
      return x.sin6_port == y.sin6_port &&
             std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
    }
    case AF_UNSPEC:
      return true;
    default:
      return false;  // parse promises AF_INET, AF_INET6 or AF_UNSPEC only
  }
}

bool same_tlvs(const Header& a, const Header& b) {
  if (a.alpn != b.alpn || a.authority != b.authority) return false;
  if (a.ssl.has_value() != b.ssl.has_value()) return false;
  if (!a.ssl) return true;
  const auto& x = *a.ssl;
  const auto& y = *b.ssl;
  return x.client_cert_conn == y.client_cert_conn && x.client_cert_sess == y.client_cert_sess &&
         x.verify == y.verify && x.version == y.version && x.cn == y.cn && x.cipher == y.cipher &&
         x.sig_alg == y.sig_alg && x.key_alg == y.key_alg;
}

void check_header(const Header& h) {
  const int family = h.src.ss_family;
  FUZZ_CHECK(family == AF_INET || family == AF_INET6 || family == AF_UNSPEC);
  FUZZ_CHECK(h.dst.ss_family == family);  // both addresses, one family
  if (h.local) FUZZ_CHECK(family == AF_UNSPEC);
}

// `encoded` (from one of ferry's encoders) parses back to `h`.
void check_round_trip(const Header& h, const std::string& encoded, bool v2) {
  FUZZ_CHECK(!encoded.empty());
  const ParseResult again = parse(encoded);
  FUZZ_CHECK(again.status == ParseStatus::ok);
  FUZZ_CHECK(again.consumed == encoded.size());
  FUZZ_CHECK(same_address(again.header.src, h.src));
  FUZZ_CHECK(same_address(again.header.dst, h.dst));
  if (v2) {
    FUZZ_CHECK(again.header.local == h.local);
    FUZZ_CHECK(same_tlvs(again.header, h));
    FUZZ_CHECK(ferry::proxy::encode_v2(again.header) == encoded);  // stable
  } else {
    FUZZ_CHECK(ferry::proxy::encode_v1(again.header) == encoded);
  }
}

// FERRY_FUZZ_VERBOSE=1: one line per input with the parse result (triage, checking seeds).
bool verbose() {
  static const bool on = std::getenv("FERRY_FUZZ_VERBOSE") != nullptr;
  return on;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so ASan catches any read past `size`.
  const std::string input(reinterpret_cast<const char*>(data), size);
  const ParseResult r = parse(input);
  if (verbose()) {
    static const char* const names[] = {"incomplete", "ok", "invalid"};
    std::fprintf(stderr, "fuzz_proxy_protocol: %zu bytes: %s consumed=%zu %s\n", size,
                 names[static_cast<int>(r.status)], r.consumed, r.error.c_str());
  }

  switch (r.status) {
    case ParseStatus::incomplete:
      // Nothing said about consumed/header; but a prefix can only be incomplete while it is
      // shorter than the largest header ferry accepts.
      FUZZ_CHECK(size < ferry::proxy::kMaxV2Length);
      return 0;
    case ParseStatus::invalid:
      FUZZ_CHECK(!r.error.empty());
      return 0;
    case ParseStatus::ok:
      break;
  }

  FUZZ_CHECK(r.consumed > 0 && r.consumed <= size);
  FUZZ_CHECK(r.consumed <= ferry::proxy::kMaxV2Length);
  const bool v2 = input[0] == '\r';
  if (!v2) FUZZ_CHECK(r.consumed <= ferry::proxy::kMaxV1Length);
  check_header(r.header);

  // Exactly the header: still ok, same length and content.
  const std::string header_bytes = input.substr(0, r.consumed);
  const ParseResult exact = parse(header_bytes);
  FUZZ_CHECK(exact.status == ParseStatus::ok && exact.consumed == r.consumed);
  FUZZ_CHECK(same_address(exact.header.src, r.header.src) &&
             same_address(exact.header.dst, r.header.dst) && same_tlvs(exact.header, r.header));
  // One byte short: must ask for more.
  const ParseResult short_by_one = parse(header_bytes.substr(0, r.consumed - 1));
  FUZZ_CHECK(short_by_one.status == ParseStatus::incomplete);

  // encode_v2 cuts every string TLV to kMaxV2StringLength, which parse does not require.
  Header expected = r.header;
  auto cut = [](std::string& s) {
    if (s.size() > ferry::proxy::kMaxV2StringLength) s.resize(ferry::proxy::kMaxV2StringLength);
  };
  cut(expected.alpn);
  cut(expected.authority);
  if (expected.ssl) {
    for (std::string* s : {&expected.ssl->version, &expected.ssl->cn, &expected.ssl->cipher,
                           &expected.ssl->sig_alg, &expected.ssl->key_alg}) {
      cut(*s);
    }
  }
  check_round_trip(expected, ferry::proxy::encode_v2(r.header), /*v2=*/true);
  // v1 has no LOCAL command and no TLVs: compare the addresses only.
  Header plain;
  plain.src = r.header.src;
  plain.dst = r.header.dst;
  check_round_trip(plain, ferry::proxy::encode_v1(plain), /*v2=*/false);
  return 0;
}
