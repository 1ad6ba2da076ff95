#include "daemon/check.h"

#include <ctime>
#include <string>

namespace ferry {
namespace {

std::string iso_time(std::time_t t) {
  tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

void print_certificate(const CertificateInfo& cert, std::time_t now, std::FILE* out) {
  std::fprintf(out, "  certificate: subject %s\n", cert.subject.c_str());
  std::string sans;
  for (const std::string& san : cert.sans) sans += (sans.empty() ? "" : ", ") + san;
  std::fprintf(out, "  SANs: %s\n", sans.empty() ? "(none)" : sans.c_str());
  const long days = static_cast<long>((cert.not_after - now) / 86400);
  std::fprintf(out, "  expires: %s (%s%ld days)\n", iso_time(cert.not_after).c_str(),
               cert.expired ? "EXPIRED " : "", days);
  std::fprintf(out, "  key: %s\n", cert.key_type.c_str());
}

}  // namespace

void print_summary(const Runtime& runtime, std::FILE* out) {
  const Config& c = runtime.config;
  const size_t n = runtime.services.size();
  const unsigned w = c.effective_workers();
  std::fprintf(out, "%s: OK (%zu service%s, %u worker%s)\n", c.path.c_str(), n, n == 1 ? "" : "s",
               w, w == 1 ? "" : "s");
  if (c.metrics) std::fprintf(out, "metrics: http://%s/metrics\n", c.metrics->listen.str().c_str());
  const std::time_t now = std::time(nullptr);
  for (const ServiceRuntime& s : runtime.services) {
    const std::string accept = s.listen_key();
    const bool client = s.config.mode == ServiceMode::client;
    std::fprintf(out, "service %s: %s, accept %s, connect %s\n", s.config.name.c_str(),
                 client ? "client" : "server", accept.c_str(), connect_summary(s.config).c_str());
    if (client) {
      const TlsPolicy& t = s.config.tls;
      std::fprintf(out, "  upstream: server_name %s, verify %s, trust %s\n", t.server_name.c_str(),
                   t.verify ? "on" : "OFF", t.ca.empty() ? "system store" : t.ca.c_str());
      if (!s.config.cert_file.empty()) {
        std::fprintf(out, "  client certificate: %s\n", s.config.cert_file.c_str());
      }
      continue;
    }
    print_certificate(s.tls->cert, now, out);
    for (const CertificateInfo& extra : s.tls->extra_certs) print_certificate(extra, now, out);
  }
}

}  // namespace ferry
