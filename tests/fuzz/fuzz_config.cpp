// Arbitrary text as a ferry config: load_config_string must never crash, leak or let an
// exception escape from its own code, and what it returns must be self-consistent.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.h"
#include "tests/fuzz/fuzz_invariant.h"

namespace {

using ferry::Config;
using ferry::ConfigError;
using ferry::LoadResult;

constexpr std::string_view kPath = "/etc/ferry/fuzz.toml";

void check_error(const ConfigError& e) {
  FUZZ_CHECK(e.pos.file == kPath);
  FUZZ_CHECK(e.pos.line >= 0 && e.pos.column >= 0);
  FUZZ_CHECK(!e.message.empty());
  // load_config_string turns an exception thrown from inside the loader into a position-less
  // "cannot load: ..." error. toml++'s syntax errors are reported with a position instead, so
  // this message means the loader itself threw on some input: a bug to find here.
  FUZZ_CHECK(e.message.rfind("cannot load:", 0) != 0);
  FUZZ_CHECK(!e.str().empty());
}

void check_config(const Config& c) {
  FUZZ_CHECK(c.path == kPath);
  FUZZ_CHECK(!c.services.empty());
  FUZZ_CHECK(c.workers <= 1024);
  FUZZ_CHECK(c.shutdown_timeout.count() > 0);
  if (c.metrics) FUZZ_CHECK(c.metrics->listen.port != 0);
  for (size_t i = 0; i < c.services.size(); ++i) {
    const ferry::ServiceConfig& s = c.services[i];
    FUZZ_CHECK(s.index == i);
    FUZZ_CHECK(!s.name.empty());
    for (char ch : s.name) {
      FUZZ_CHECK((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-');
    }
    if (!s.accept.host.empty()) {
      // A TCP accept address written back and read again is the same address.
      auto again = ferry::parse_host_port(s.accept.str());
      FUZZ_CHECK(again && again->host == s.accept.host && again->port == s.accept.port);
    }
    if (s.mode == ferry::ServiceMode::server) FUZZ_CHECK(!s.cert_file.empty());
    for (auto timeout : {s.handshake_timeout, s.connect_timeout, s.idle_timeout}) {
      FUZZ_CHECK(timeout.count() > 0 && timeout.count() <= 24 * 3600 * 1000);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const LoadResult r = ferry::load_config_string(text, std::string(kPath));

  FUZZ_CHECK(r.config.has_value() == r.errors.empty());
  FUZZ_CHECK(!(r.config && r.partial));
  for (const ConfigError& e : r.errors) check_error(e);
  for (const ConfigError& w : r.warnings) check_error(w);
  if (r.config) check_config(*r.config);
  return 0;
}
