#include "core/tls_client_context.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/handshake_failure.h"
#include "core/pem.h"
#include "core/tls_policy.h"

namespace ferry {
namespace {

// The same defaults as the server side: TLS 1.2 with forward secrecy and AEAD only.
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kGroups = "X25519:P-256:P-384";

void free_x509_infos(STACK_OF(X509_INFO) * infos) {
  sk_X509_INFO_pop_free(infos, X509_INFO_free);
}
using X509InfoStackPtr = std::unique_ptr<STACK_OF(X509_INFO), Free<free_x509_infos>>;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, Free<SSL_SESSION_free>>;

// ---- the session cache, reachable from the SSL_CTX -----------------------------------------

// The SSL_CTX's ex_data slot holds a heap-allocated shared_ptr to the service's cache, deleted
// when the SSL_CTX is freed: upstream SSLs that outlive their ClientTlsContext (a reload in the
// middle of a handshake) keep the cache alive through their SSL_CTX reference.
void free_cache_slot(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/,
                     long /*argl*/, void* /*argp*/) {
  delete static_cast<std::shared_ptr<ClientSessionCache>*>(ptr);
}

int cache_index() {
  static const int index =
      checked_ex_index(SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_cache_slot));
  return index;
}

// The cache never shares an SSL_SESSION object with a live SSL: SSL_free() of a connection that
// did not send close_notify marks the SSL's current session not resumable (OpenSSL's "bad
// session" rule, via SSL_CTX_remove_session), and an upstream connection ending with a reset
// must not spoil resumption for the whole service. So sessions go in and come out as copies.
SslSessionPtr copy_session(SSL_SESSION* session) {
  return SslSessionPtr(session != nullptr ? SSL_SESSION_dup(session) : nullptr);
}

// New sessions arrive here: at the end of a TLS 1.2 handshake, and for TLS 1.3 whenever a
// NewSessionTicket is read, which is after the handshake (during SSL_read).
int on_new_session(SSL* ssl, SSL_SESSION* session) {
  auto* slot = static_cast<std::shared_ptr<ClientSessionCache>*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), cache_index()));
  if (slot != nullptr && *slot) {
    if (SslSessionPtr copy = copy_session(session)) (*slot)->store(copy.get());
  }
  ERR_clear_error();
  return 0;  // OpenSSL keeps its reference; the cache holds its own copy
}

// Collects one service's problems under "service[N].<key>" at the key's position.
class Reporter {
 public:
  Reporter(const ServiceConfig& service, std::vector<ConfigError>& errors,
           std::vector<ConfigError>& warnings)
      : service_(service), errors_(errors), warnings_(warnings) {}

  void error(const SourcePos& pos, const char* key, std::string message) {
    errors_.push_back({pos, prefix() + "." + key, std::move(message)});
  }
  void warning(const SourcePos& pos, const char* key, std::string message) {
    warnings_.push_back({pos, prefix() + "." + key, std::move(message)});
  }
  void service_error(std::string message) {
    errors_.push_back({service_.pos, prefix(), std::move(message)});
  }
  bool failed() const { return errors_.size() != errors_at_start_; }

 private:
  std::string prefix() const { return "service[" + std::to_string(service_.index) + "]"; }

  const ServiceConfig& service_;
  std::vector<ConfigError>& errors_;
  std::vector<ConfigError>& warnings_;
  size_t errors_at_start_ = errors_.size();
};

// A client certificate's problems go to the service's cert and key keys.
class ClientPairReport final : public PairReport {
 public:
  ClientPairReport(const ServiceConfig& service, Reporter& report)
      : service_(service), report_(report) {}

  void cert_error(std::string message) override {
    report_.error(service_.cert_pos, "cert", std::move(message));
  }
  void key_error(std::string message) override {
    report_.error(service_.key_pos, "key", std::move(message));
  }
  void key_warning(std::string message) override {
    report_.warning(service_.key_pos, "key", std::move(message));
  }

 private:
  const ServiceConfig& service_;
  Reporter& report_;
};

// The optional client certificate (mTLS upstream): cert/key of the service, checked like the
// server side checks its certificate. Returns false if anything was reported as an error.
bool use_client_certificate(SSL_CTX* ctx, const ServiceConfig& service, Reporter& report) {
  const std::string& key_path = service.key_file.empty() ? service.cert_file : service.key_file;
  ClientPairReport pair_report(service, report);
  CertChain chain;
  EvpPkeyPtr key;
  if (!load_cert_and_key(service.cert_file, key_path, chain, key, pair_report) ||
      !use_cert_and_key(ctx, chain, key.get(), pair_report)) {
    return false;
  }

  const X509* leaf = chain.leaf.get();
  const std::time_t now = std::time(nullptr);
  const std::time_t not_after = asn1_time_to_unix(X509_get0_notAfter(leaf));
  const std::time_t not_before = asn1_time_to_unix(X509_get0_notBefore(leaf));
  if (not_after < now) {
    report.warning(service.cert_pos, "cert", "certificate expired on " + format_utc(not_after));
  } else if (not_before > now) {
    report.warning(service.cert_pos, "cert",
                   "certificate is not valid before " + format_utc(not_before));
  }
  ERR_clear_error();
  return true;
}

// ---- trust anchors --------------------------------------------------------------------------

// Adds every certificate of a PEM file to `store`. Returns how many were added, or -1 after
// reporting an error.
int add_pem_certificates(X509_STORE* store, const std::string& path, Reporter& report,
                         const SourcePos& ca_pos) {
  std::string pem, why;
  if (!read_pem_file(path, pem, why)) {
    report.error(ca_pos, "ca", "cannot read " + quoted(path) + ": " + why);
    return -1;
  }
  BioPtr bio = memory_bio(pem);
  ERR_clear_error();
  X509InfoStackPtr infos(bio ? PEM_X509_INFO_read_bio(bio.get(), nullptr, no_passphrase, nullptr)
                             : nullptr);
  if (!infos) {
    report.error(ca_pos, "ca", "cannot parse " + quoted(path) + ": " + drain_openssl_errors());
    return -1;
  }
  int added = 0;
  for (int i = 0; i < sk_X509_INFO_num(infos.get()); ++i) {
    X509* cert = sk_X509_INFO_value(infos.get(), i)->x509;
    if (cert == nullptr) continue;  // a CRL or a key: not a trust anchor
    ERR_clear_error();
    if (X509_STORE_add_cert(store, cert) != 1) {
      report.error(ca_pos, "ca",
                   "cannot use a certificate from " + quoted(path) + ": " + drain_openssl_errors());
      return -1;
    }
    ++added;
  }
  ERR_clear_error();
  return added;
}

// "9d66eef0.0": the names c_rehash / openssl rehash give, found by SSL_CTX_load_verify_dir.
bool is_hashed_name(const std::string& name) {
  size_t dot = name.find('.');
  if (dot != 8 || name.size() == 9) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (i < 8 && !std::isxdigit(static_cast<unsigned char>(c))) return false;
    if (i > 8 && !std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool has_suffix(const std::string& name, std::string_view suffix) {
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(),
                                                     suffix.data(), suffix.size()) == 0;
}

// A CA directory is both: looked up by hashed name (c_rehash layout, e.g. /etc/ssl/certs), and
// every *.pem / *.crt / *.cer file in it is loaded up front, so a plain directory of PEM files
// works without running `openssl rehash` on it. Subdirectories are not searched.
bool load_ca_directory(SSL_CTX* ctx, const std::string& dir, Reporter& report,
                       const SourcePos& ca_pos) {
  std::vector<std::string> pem_files;
  bool hashed = false;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (is_hashed_name(name)) hashed = true;
    if (has_suffix(name, ".pem") || has_suffix(name, ".crt") || has_suffix(name, ".cer")) {
      std::error_code file_ec;
      if (it->is_regular_file(file_ec)) pem_files.push_back(it->path().string());
    }
  }
  if (ec) {
    report.error(ca_pos, "ca", "cannot read " + quoted(dir) + ": " + ec.message());
    return false;
  }
  std::sort(pem_files.begin(), pem_files.end());

  int loaded = 0;
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  for (const auto& file : pem_files) {
    const int n = add_pem_certificates(store, file, report, ca_pos);
    if (n < 0) return false;
    loaded += n;
  }
  if (hashed) {
    ERR_clear_error();
    if (SSL_CTX_load_verify_dir(ctx, dir.c_str()) != 1) {
      report.error(ca_pos, "ca", "cannot use " + quoted(dir) + ": " + drain_openssl_errors());
      return false;
    }
  }
  if (loaded == 0 && !hashed) {
    report.error(ca_pos, "ca", "no certificate found in " + quoted(dir));
    return false;
  }
  return true;
}

bool load_trust(SSL_CTX* ctx, const TlsPolicy& tls, Reporter& report) {
  if (tls.ca.empty()) {
    ERR_clear_error();
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      report.service_error("cannot load the system trust store: " + drain_openssl_errors());
      return false;
    }
    return true;
  }
  struct stat st {};
  if (::stat(tls.ca.c_str(), &st) != 0) {
    const std::string why = std::strerror(errno);
    report.error(tls.ca_pos, "ca", "cannot read " + quoted(tls.ca) + ": " + why);
    return false;
  }
  if (S_ISDIR(st.st_mode)) return load_ca_directory(ctx, tls.ca, report, tls.ca_pos);

  // A file: the same as SSL_CTX_load_verify_file(), parsed here to tell "empty" from "broken".
  const int n = add_pem_certificates(SSL_CTX_get_cert_store(ctx), tls.ca, report, tls.ca_pos);
  if (n == 0) report.error(tls.ca_pos, "ca", "no certificate found in " + quoted(tls.ca));
  return n > 0;
}

// ---- protocol policy ------------------------------------------------------------------------

// ferry's defaults, then the service's own keys through the same code as the server side (same
// messages at the same positions).
void apply_protocol_policy(SSL_CTX* ctx, const ServiceConfig& service, Reporter& report,
                           std::vector<ConfigError>& errors) {
  ERR_clear_error();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx, kTls12Ciphers) != 1 ||
      SSL_CTX_set1_groups_list(ctx, kGroups) != 1) {
    report.service_error("cannot apply the TLS policy: " + drain_openssl_errors());
  }
  apply_tls_policy_keys(ctx, service, /*alpn=*/nullptr, &errors);  // errors land in `errors`
  ERR_clear_error();

  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               // The upstream closing without close_notify is an ordinary
                               // end of stream, not an error (the same as the server side).
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 1);
}

void set_alpn(SSL_CTX* ctx, const TlsPolicy& tls, Reporter& report) {
  if (tls.alpn.empty()) return;
  const std::string wire = alpn_wire(tls.alpn);  // names are 1..255 bytes (the loader checks)
  ERR_clear_error();
  // Unlike most of OpenSSL, 0 means success here.
  if (SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                              static_cast<unsigned>(wire.size())) != 0) {
    report.error(tls.alpn_pos, "alpn", "cannot set the ALPN list: " + drain_openssl_errors());
  }
}

// "127.0.0.1", "::1" and "fe80::1%eth0" (zone dropped) are IP literals; a hostname is not.
std::optional<std::string> ip_literal(const std::string& name) {
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(AF_INET, name.c_str(), buf) == 1) return name;
  const std::string address = name.substr(0, name.find('%'));
  if (inet_pton(AF_INET6, address.c_str(), buf) == 1) return address;
  return std::nullopt;
}

}  // namespace

ClientSessionCache::~ClientSessionCache() {
  SSL_SESSION_free(session_);
}

void ClientSessionCache::store(SSL_SESSION* session) {
  if (session == nullptr || SSL_SESSION_up_ref(session) != 1) return;
  SSL_SESSION* old = nullptr;
  {
    std::lock_guard lock(mutex_);
    old = std::exchange(session_, session);
  }
  SSL_SESSION_free(old);  // outside the lock
}

SSL_SESSION* ClientSessionCache::take_ref() const {
  std::lock_guard lock(mutex_);
  if (session_ == nullptr || SSL_SESSION_up_ref(session_) != 1) return nullptr;
  return session_;
}

std::optional<ClientTlsContext> build_client_tls_context(const ServiceConfig& service,
                                                         std::vector<ConfigError>& errors,
                                                         std::vector<ConfigError>& warnings) {
  Reporter report(service, errors, warnings);
  const TlsPolicy& tls = service.tls;

  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) {
    report.service_error("cannot create a TLS context: " + drain_openssl_errors());
    return std::nullopt;
  }
  apply_protocol_policy(ctx.get(), service, report, errors);

  if (tls.verify) {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
    report.warning(tls.verify_pos, "verify",
                   "certificate verification is off: the upstream server is not authenticated");
  }
  load_trust(ctx.get(), tls, report);
  if (!service.cert_file.empty()) use_client_certificate(ctx.get(), service, report);
  set_alpn(ctx.get(), tls, report);
  if (report.failed()) return std::nullopt;

  // Resumption: OpenSSL hands every new session to on_new_session and keeps none itself.
  auto sessions = std::make_shared<ClientSessionCache>();
  auto* slot = new std::shared_ptr<ClientSessionCache>(sessions);
  if (SSL_CTX_set_ex_data(ctx.get(), cache_index(), slot) != 1) {
    delete slot;
    report.service_error("cannot attach the session cache: " + drain_openssl_errors());
    return std::nullopt;
  }
  SSL_CTX_set_session_cache_mode(ctx.get(),
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx.get(), on_new_session);
  ERR_clear_error();
  return ClientTlsContext{std::move(ctx), std::move(sessions)};
}

bool prepare_client_ssl(SSL* ssl, const ServiceConfig& service, const ClientTlsContext& tls) {
  // The loader defaults server_name to connect's host; a config built in code may leave it out.
  std::string name = service.tls.server_name;
  if (name.empty() && !service.connect.backends.empty()) name = service.connect.backends[0].tcp.host;
  const bool verify = service.tls.verify;
  ERR_clear_error();
  if (auto ip = ip_literal(name)) {
    // RFC 6066: no SNI for addresses. The certificate must carry the address as an IP SAN.
    if (verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip->c_str()) != 1) {
      return false;
    }
  } else {
    if (!name.empty() && name.back() == '.') name.pop_back();  // SNI has no trailing dot
    if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) return false;
    if (verify) {
      SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (SSL_set1_host(ssl, name.c_str()) != 1) return false;
    }
  }
  if (tls.sessions) {
    SslSessionPtr cached(tls.sessions->take_ref());
    // A copy for this SSL (see copy_session). Without one: a full handshake, which is fine.
    if (SslSessionPtr copy = copy_session(cached.get())) SSL_set_session(ssl, copy.get());
    ERR_clear_error();
  }
  SSL_set_connect_state(ssl);
  return true;
}

}  // namespace ferry
