#include "core/runtime.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/metrics.h"

namespace ferry {

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

std::string ServiceRuntime::listen_key() const {
  return config.accept_systemd.empty() ? accept.str() : "systemd:" + config.accept_systemd;
}

std::string connect_summary(const ServiceConfig& svc) {
  auto group = [](const BackendGroupConfig& g) {
    std::string out;
    for (const Endpoint& e : g.backends) out += (out.empty() ? "" : ", ") + e.str();
    if (g.backends.size() > 1) {
      out += g.balance == Balance::failover            ? " (failover)"
             : g.balance == Balance::least_connections ? " (least-connections)"
                                                       : " (round-robin)";
    }
    if (g.proxy_protocol != ProxyProtocol::none) {
      out += g.proxy_protocol == ProxyProtocol::v1 ? " +PROXY v1" : " +PROXY v2";
    }
    return out;
  };
  std::string out =
      svc.connect.backends.empty() ? "(none: unrouted names are refused)" : group(svc.connect);
  for (const RouteConfig& r : svc.routes) out += "; sni " + r.sni + " -> " + group(r.group);
  return out;
}

bool ServiceRuntime::admits(const sockaddr* client) const {
  if (cidr_match(config.deny, client)) return false;
  return config.allow.empty() || cidr_match(config.allow, client);
}

std::string file_digest(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    // A CA directory: the digest of its files' names and digests, in name order.
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
      if (entry.is_regular_file(ec)) names.push_back(entry.path().string());
    }
    std::sort(names.begin(), names.end());
    std::string all;
    for (const std::string& name : names) all += name + '\0' + file_digest(name) + '\0';
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(all.data(), all.size(), md, &len, EVP_sha256(), nullptr);
    return "dir:" + std::string(reinterpret_cast<const char*>(md), len);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  OPENSSL_cleanse(data.data(), data.size());  // may hold a private key
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

std::vector<std::string> tls_input_files(const ServiceConfig& svc) {
  const TlsPolicy& t = svc.tls;
  std::vector<std::string> files;
  for (const std::string* f :
       {&svc.cert_file, &svc.key_file, &t.client_ca, &t.crl, &t.ticket_key_file, &t.ca}) {
    if (!f->empty()) files.push_back(*f);
  }
  for (const CertificateConfig& c : t.certificates) {
    files.push_back(c.cert_file);
    files.push_back(c.key_file);
  }
  return files;
}

std::string tls_fingerprint(const ServiceConfig& svc) {
  const TlsPolicy& t = svc.tls;
  std::string f;
  auto add = [&f](const std::string& part) {
    f += part;
    f.push_back('\0');
  };
  add(svc.name);
  add(svc.mode == ServiceMode::client ? "client" : "server");
  for (const std::string& file : tls_input_files(svc)) {
    add(file);
    add(file_digest(file));
  }
  add(std::to_string(t.min_version) + "/" + std::to_string(t.max_version));
  for (const std::string* s : {&t.ciphers, &t.ciphersuites, &t.groups, &t.server_name}) add(*s);
  for (const std::string& a : t.alpn) add(a);
  add("|");
  for (const std::string& a : t.allow_subjects) add(a);
  add("|");
  for (const std::string& a : t.allow_sans) add(a);
  add(std::to_string(static_cast<int>(t.verify_client)) + (t.verify ? "v" : "-") +
      (t.session_tickets ? "t" : "-") + std::to_string(t.record_padding));
  return f;
}

namespace {

const ServiceRuntime* find_service(const Runtime* rt, const std::string& name) {
  if (!rt) return nullptr;
  for (const ServiceRuntime& s : rt->services) {
    if (s.config.name == name) return &s;
  }
  return nullptr;
}

}  // namespace

RuntimeResult build_runtime(const Config& config, Metrics* metrics, const Runtime* previous) {
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
    if (!svc.accept_unix.empty()) {
      if (auto addr = SocketAddress::from_unix(svc.accept_unix)) rt.accept = *addr;
    } else if (svc.accept_systemd.empty() && !resolve(svc.accept, true, rt.accept, why)) {
      result.errors.push_back({svc.accept_pos, key + ".accept", why});
    }
    // Backends are resolved when connecting (numeric ones here, without DNS).
    if (!svc.connect.backends.empty()) {
      rt.backends = std::make_unique<BackendGroup>(svc.connect, svc.max_fails, svc.fail_timeout);
    }
    for (const RouteConfig& route : svc.routes) {
      rt.router.add(route.sni,
                    std::make_unique<BackendGroup>(route.group, svc.max_fails, svc.fail_timeout));
    }
    rt.tls_fingerprint = tls_fingerprint(svc);
    const ServiceRuntime* old = find_service(previous, svc.name);
    // Live connections keep counting against max_connections across a reload.
    rt.state = old ? old->state : std::make_shared<ServiceState>();
    const bool reuse = old && old->tls_fingerprint == rt.tls_fingerprint;
    if (svc.mode == ServiceMode::client) {
      if (reuse && old->client_tls) {
        rt.client_tls = old->client_tls;  // keeps its session cache too
      } else if (auto tls = build_client_tls_context(svc, result.errors, result.warnings)) {
        rt.client_tls = std::make_shared<const ClientTlsContext>(std::move(*tls));
      }
    } else if (reuse && old->tls) {
      rt.tls = old->tls;
    } else if (auto tls = build_server_tls_context(svc, result.errors, result.warnings)) {
      rt.tls = std::make_shared<const ServerTlsContext>(std::move(*tls));
    }
    runtime->services.push_back(std::move(rt));
  }
  if (!result.errors.empty()) return result;

  if (metrics) {
    for (ServiceRuntime& rt : runtime->services) {
      rt.metrics = &metrics->service(rt.config.name);
      auto add_backends = [&](const BackendGroup* group) {
        if (!group) return;
        for (const auto& b : group->backends()) metrics->register_backend(rt.config.name, *b);
      };
      add_backends(rt.backends.get());
      for (const Router::Route& r : rt.router.routes()) add_backends(r.group.get());
      if (rt.client_tls) {
        metrics->register_ciphers(*rt.metrics, rt.client_tls->ctx.get());
        continue;
      }
      metrics->register_ciphers(*rt.metrics, rt.tls->ctx.get());
      std::vector<std::pair<std::string, std::time_t>> certs{
          {rt.tls->cert.subject, rt.tls->cert.not_after}};
      for (const CertificateInfo& extra : rt.tls->extra_certs) {
        certs.emplace_back(extra.subject, extra.not_after);
      }
      metrics->set_certificate_expiry(rt.config.name, certs);
    }
  }
  result.runtime = std::move(runtime);
  return result;
}

}  // namespace ferry
