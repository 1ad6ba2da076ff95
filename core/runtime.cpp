#include "core/runtime.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <cstring>

#include "core/metrics.h"

namespace ferry {

std::string SocketAddress::str() const {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (storage.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    port = ntohs(sin->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  if (storage.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
    port = ntohs(sin6->sin6_port);
    std::string out = "[";
    out.append(host).append("]:").append(std::to_string(port));
    return out;
  }
  return "?";
}

bool resolve(const HostPort& hp, bool passive, SocketAddress& out, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  const std::string port = std::to_string(hp.port);
  const int rc = getaddrinfo(hp.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || !res) {
    why = "cannot resolve \"" + hp.host + "\": " + gai_strerror(rc);
    return false;
  }
  std::memcpy(&out.storage, res->ai_addr, res->ai_addrlen);
  out.len = res->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

RuntimeResult build_runtime(const Config& config, Metrics* metrics) {
  RuntimeResult result;
  auto runtime = std::make_shared<Runtime>();
  runtime->config = config;
  for (size_t i = 0; i < config.services.size(); ++i) {
    const ServiceConfig& svc = config.services[i];
    const std::string key = "service[" + std::to_string(i) + "]";
    ServiceRuntime rt;
    rt.config = svc;
    rt.index = i;
    std::string why;
    if (!resolve(svc.accept, true, rt.accept, why)) {
      result.errors.push_back({svc.accept_pos, key + ".accept", why});
    }
    if (!resolve(svc.connect, false, rt.backend, why)) {
      result.errors.push_back({svc.connect_pos, key + ".connect", why});
    }
    auto tls = build_server_tls_context(svc, result.errors, result.warnings);
    if (tls) rt.tls = std::move(*tls);
    runtime->services.push_back(std::move(rt));
  }
  if (!result.errors.empty()) return result;

  if (metrics) {
    for (ServiceRuntime& rt : runtime->services) {
      rt.metrics = &metrics->service(rt.config.name);
      metrics->register_ciphers(*rt.metrics, rt.tls.ctx.get());
      metrics->set_certificate_expiry(rt.config.name, rt.tls.cert.subject, rt.tls.cert.not_after);
    }
  }
  result.runtime = std::move(runtime);
  return result;
}

}  // namespace ferry
