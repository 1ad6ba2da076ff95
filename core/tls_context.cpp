#include "core/tls_context.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "core/client_auth.h"
#include "core/handshake_failure.h"
#include "core/pem.h"
#include "core/ticket_keys.h"
#include "core/tls_policy.h"

namespace ferry {
namespace {

// TLS 1.2: forward secrecy and AEAD only. TLS 1.3 suites stay at OpenSSL's defaults (all AEAD).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kGroups = "X25519:P-256:P-384";
// AES-128-GCM first: as strong as needed and the fastest with AES-NI. Clients that prefer
// ChaCha20 (no AES hardware) get it through SSL_OP_PRIORITIZE_CHACHA.
constexpr const char* kTls13Suites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
constexpr long kSessionCacheSize = 20480;
constexpr std::time_t kExpiryWarning = 30 * 86400;  // --check warns this long before expiry

using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Free<GENERAL_NAMES_free>>;

std::string asn1_string(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

std::vector<std::string> subject_alt_names(X509* cert) {
  std::vector<std::string> out;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    switch (gn->type) {
      case GEN_DNS:
        out.push_back("DNS:" + asn1_string(gn->d.dNSName));
        break;
      case GEN_EMAIL:
        out.push_back("email:" + asn1_string(gn->d.rfc822Name));
        break;
      case GEN_URI:
        out.push_back("URI:" + asn1_string(gn->d.uniformResourceIdentifier));
        break;
      case GEN_IPADD: {
        const ASN1_OCTET_STRING* ip = gn->d.iPAddress;
        char text[INET6_ADDRSTRLEN] = {};
        int family = ASN1_STRING_length(ip) == 4    ? AF_INET
                     : ASN1_STRING_length(ip) == 16 ? AF_INET6
                                                    : 0;
        if (family != 0 && inet_ntop(family, ASN1_STRING_get0_data(ip), text, sizeof text)) {
          out.push_back(std::string("IP Address:") + text);
        } else {
          out.push_back("IP Address:<invalid>");
        }
        break;
      }
      default:
        break;  // otherName, dirName, ...: not useful in a summary
    }
  }
  return out;
}

std::string key_type_name(const EVP_PKEY* key) {
  if (key == nullptr) return "unknown";
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
      return "RSA " + std::to_string(EVP_PKEY_get_bits(key));
    case EVP_PKEY_RSA_PSS:
      return "RSA-PSS " + std::to_string(EVP_PKEY_get_bits(key));
    case EVP_PKEY_EC: {
      char group[80] = {};
      size_t len = 0;
      if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) != 1) return "EC";
      int nid = OBJ_sn2nid(group);
      if (nid == NID_undef) nid = EC_curve_nist2nid(group);
      const char* nist = nid != NID_undef ? EC_curve_nid2nist(nid) : nullptr;
      return std::string("EC ") + (nist != nullptr ? nist : group);
    }
    case EVP_PKEY_ED25519:
      return "Ed25519";
    case EVP_PKEY_ED448:
      return "Ed448";
    default: {
      const char* name = EVP_PKEY_get0_type_name(key);
      return name != nullptr ? name : "unknown";
    }
  }
}

// Marks the SSL for the failure classifier and, when the service has SNI certificates (`arg`
// is its SniSelector), switches to the context for the requested name. With a
// HelloRetryRequest it runs again on the chosen context, whose `arg` is null.
int sni_gate_index() {
  static const int index =
      checked_ex_index(SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr));
  return index;
}

int on_client_hello(SSL* ssl, int* alert, void* arg) {
  static char marker;
  SSL_set_ex_data(ssl, client_hello_seen_index(), &marker);
  if (auto* gate = static_cast<SniGate*>(SSL_get_ex_data(ssl, sni_gate_index()))) {
    if (!gate->allow(gate->arg, client_hello_server_name(ssl))) {
      gate->refused = true;
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_CLIENT_HELLO_ERROR;
    }
  }
  if (arg == nullptr) return SSL_CLIENT_HELLO_SUCCESS;
  const std::string name = client_hello_server_name(ssl);
  if (name.empty()) return SSL_CLIENT_HELLO_SUCCESS;
  SSL_CTX* chosen = static_cast<const SniSelector*>(arg)->select(name);
  if (chosen != nullptr && chosen != SSL_get_SSL_CTX(ssl) &&
      SSL_set_SSL_CTX(ssl, chosen) == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

// Collects the problems of one service, keeping warnings about expired certificates ahead of
// the service's other warnings.
class ServiceReport {
 public:
  ServiceReport(const ServiceConfig& service, std::vector<ConfigError>& errors,
                std::vector<ConfigError>& warnings)
      : service_(service), errors_(errors), warnings_(warnings) {}

  std::string prefix() const { return "service[" + std::to_string(service_.index) + "]"; }
  void error(const SourcePos& pos, std::string key, std::string message) {
    errors_.push_back({pos, std::move(key), std::move(message)});
  }
  void warning(const SourcePos& pos, std::string key, std::string message) {
    warnings_.push_back({pos, std::move(key), std::move(message)});
  }
  void urgent_warning(const SourcePos& pos, std::string key, std::string message) {
    auto at = warnings_.begin() + static_cast<std::ptrdiff_t>(warnings_at_start_ + urgent_++);
    warnings_.insert(at, {pos, std::move(key), std::move(message)});
  }
  void service_error(std::string message) { error(service_.pos, prefix(), std::move(message)); }
  bool failed() const { return errors_.size() != errors_at_start_; }
  std::vector<ConfigError>& errors() { return errors_; }
  std::vector<ConfigError>& warnings() { return warnings_; }

 private:
  const ServiceConfig& service_;
  std::vector<ConfigError>& errors_;
  std::vector<ConfigError>& warnings_;
  size_t errors_at_start_ = errors_.size();
  size_t warnings_at_start_ = warnings_.size();
  size_t urgent_ = 0;  // urgent warnings at the front of this service's block
};

// Where one certificate/key pair is configured: the service's cert/key keys, or an entry of
// [[service.certificates]] ("service[0].certificates[1]").
struct PairSource {
  std::string cert_file;
  std::string key_file;
  SourcePos cert_pos;
  SourcePos key_pos;
  std::string prefix;
};

// Reports the problems of one pair at its cert or key key.
class Reporter final : public PairReport {
 public:
  Reporter(ServiceReport& service, const PairSource& source) : service_(service), src_(source) {}

  void cert_error(std::string message) override {
    service_.error(src_.cert_pos, src_.prefix + ".cert", std::move(message));
  }
  void key_error(std::string message) override {
    service_.error(src_.key_pos, src_.prefix + ".key", std::move(message));
  }
  void cert_warning(std::string message) {
    service_.warning(src_.cert_pos, src_.prefix + ".cert", std::move(message));
  }
  void urgent_cert_warning(std::string message) {
    service_.urgent_warning(src_.cert_pos, src_.prefix + ".cert", std::move(message));
  }
  void key_warning(std::string message) override {
    service_.warning(src_.key_pos, src_.prefix + ".key", std::move(message));
  }

 private:
  ServiceReport& service_;
  const PairSource& src_;
};

// Applies ferry's TLS policy to a fresh context. Returns false (with the reason) on failure.
bool apply_policy(SSL_CTX* ctx, const std::string& service_name, std::string& why) {
  ERR_clear_error();
  bool ok = SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 &&
            SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1 &&
            SSL_CTX_set_cipher_list(ctx, kTls12Ciphers) == 1 &&
            SSL_CTX_set_ciphersuites(ctx, kTls13Suites) == 1 &&
            SSL_CTX_set1_groups_list(ctx, kGroups) == 1;
  if (!ok) {
    why = drain_openssl_errors();
    return false;
  }

  uint64_t options =
      SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA | SSL_OP_NO_COMPRESSION |
      SSL_OP_NO_RENEGOTIATION |
      // A TCP FIN without close_notify is how most clients half-close. Without this option
      // OpenSSL 3 makes it a fatal error and the backend's reply could no longer be sent.
      SSL_OP_IGNORE_UNEXPECTED_EOF;
#ifdef SSL_OP_NO_CLIENT_RENEGOTIATION
  options |= SSL_OP_NO_CLIENT_RENEGOTIATION;
#endif
  SSL_CTX_set_options(ctx, options);
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);  // stateless tickets with automatic keys
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_dh_auto(ctx, 1);  // DHE suites work when `ciphers` asks for them

  // Sessions from one service must not resume on another: the context id is derived from the
  // service name (SHA-256 is exactly SSL_MAX_SID_CTX_LENGTH bytes).
  std::string id_source = "ferry service " + service_name;
  unsigned char sid_ctx[EVP_MAX_MD_SIZE];
  unsigned int sid_len = 0;
  ok = EVP_Digest(id_source.data(), id_source.size(), sid_ctx, &sid_len, EVP_sha256(), nullptr) ==
           1 &&
       sid_len <= SSL_MAX_SID_CTX_LENGTH &&
       SSL_CTX_set_session_id_context(ctx, sid_ctx, sid_len) == 1;
  if (!ok) {
    why = drain_openssl_errors();
    return false;
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  SSL_CTX_sess_set_cache_size(ctx, kSessionCacheSize);
  SSL_CTX_set_client_hello_cb(ctx, on_client_hello, nullptr);
  return true;
}

// What OpenSSL keeps one of per context (SSL_PKEY_* slots): a second RSA certificate replaces
// the first, an ECDSA one sits next to it.
std::string key_slot(const EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
      return "RSA";
    case EVP_PKEY_RSA_PSS:
      return "RSA-PSS";
    case EVP_PKEY_EC:
      return "EC";
    default:
      return EVP_PKEY_get0_type_name(key) != nullptr ? EVP_PKEY_get0_type_name(key) : "?";
  }
}

// One loaded certificate/key pair, checked and ready to be put into a context.
struct LoadedPair {
  const PairSource* source = nullptr;
  CertChain chain;
  EvpPkeyPtr key;
  CertificateInfo info;
  std::vector<std::string> names;  // what SNI selects it by
};

void check_dates(const LoadedPair& pair, Reporter& report, const CertificateInfo& info) {
  X509* leaf = pair.chain.leaf.get();
  const std::time_t now = std::time(nullptr);
  const std::time_t not_before = asn1_time_to_unix(X509_get0_notBefore(leaf));
  if (info.expired) {
    report.urgent_cert_warning("certificate expired on " + format_utc(info.not_after));
  } else if (not_before > now) {
    report.cert_warning("certificate is not valid before " + format_utc(not_before));
  } else if (info.not_after - now < kExpiryWarning) {
    report.cert_warning("certificate expires in " + std::to_string((info.not_after - now) / 86400) +
                        " days");
  }
}

// Each certificate after the leaf must have issued the one before it.
void check_chain_order(const LoadedPair& pair, Reporter& report) {
  X509* subject = pair.chain.leaf.get();
  for (size_t i = 0; i < pair.chain.chain.size(); ++i) {
    X509* issuer = pair.chain.chain[i].get();
    if (X509_check_issued(issuer, subject) != X509_V_OK) {
      report.cert_warning("chain in " + quoted(pair.source->cert_file) +
                          " is out of order or does not lead to its certificate: certificate " +
                          std::to_string(i + 2) + " (" +
                          rfc2253_name(X509_get_subject_name(issuer)) +
                          ") did not issue certificate " + std::to_string(i + 1) + " (" +
                          rfc2253_name(X509_get_subject_name(subject)) + ")");
      return;
    }
    subject = issuer;
  }
}

// Reads and checks one pair; nullopt (with errors reported) when it cannot be used.
std::optional<LoadedPair> load_pair(const PairSource& src, Reporter& report) {
  LoadedPair pair;
  pair.source = &src;
  if (!load_cert_and_key(src.cert_file, src.key_file, pair.chain, pair.key, report)) {
    return std::nullopt;
  }

  X509* leaf = pair.chain.leaf.get();
  pair.info.subject = rfc2253_name(X509_get_subject_name(leaf));
  pair.info.sans = subject_alt_names(leaf);
  pair.info.not_after = asn1_time_to_unix(X509_get0_notAfter(leaf));
  pair.info.key_type = key_type_name(X509_get0_pubkey(leaf));
  pair.info.expired = pair.info.not_after < std::time(nullptr);
  pair.names = certificate_dns_names(leaf);
  check_dates(pair, report, pair.info);
  check_chain_order(pair, report);
  ERR_clear_error();
  return pair;
}

// A fresh server context with ferry's defaults, service.tls, client authentication and ticket
// keys. Errors are reported only with `report` (the first, main context).
SslCtxPtr make_context(const ServiceConfig& service, const std::string* alpn,
                       ServiceReport* report) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  std::string why;
  if (!ctx) {
    if (report != nullptr)
      report->service_error("cannot create a TLS context: " + drain_openssl_errors());
    return nullptr;
  }
  if (!apply_policy(ctx.get(), service.name, why)) {
    if (report != nullptr) report->service_error("cannot apply the TLS policy: " + why);
    return nullptr;
  }
  if (!apply_tls_policy_keys(ctx.get(), service, alpn,
                             report != nullptr ? &report->errors() : nullptr)) {
    return nullptr;
  }
  std::vector<ConfigError> errors, warnings;
  std::vector<ConfigError>& errs = report != nullptr ? report->errors() : errors;
  std::vector<ConfigError>& warns = report != nullptr ? report->warnings() : warnings;
  bool ok = configure_client_auth(ctx.get(), service, errs, warns);
  ok = configure_session_tickets(ctx.get(), service, errs, warns) && ok;
  ERR_clear_error();
  return ok ? std::move(ctx) : nullptr;
}

// Pairs with the same names share a context, one per key type; the first group is the
// service's own certificate (the default).
struct PairGroup {
  std::vector<std::string> names;  // sorted
  std::vector<LoadedPair*> pairs;
  SslCtxPtr ctx;
};

std::vector<std::string> sorted(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace

void set_sni_gate(SSL* ssl, SniGate* gate) {
  SSL_set_ex_data(ssl, sni_gate_index(), gate);
}

int client_hello_seen_index() {
  static const int index =
      checked_ex_index(SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr));
  return index;
}

bool client_hello_seen(const SSL* ssl) {
  return SSL_get_ex_data(ssl, client_hello_seen_index()) != nullptr;
}

std::optional<ServerTlsContext> build_server_tls_context(const ServiceConfig& service,
                                                         std::vector<ConfigError>& errors,
                                                         std::vector<ConfigError>& warnings) {
  ServiceReport report(service, errors, warnings);
  const TlsPolicy& tls = service.tls;

  // Every pair is loaded and checked before giving up, so all their problems are reported.
  std::vector<PairSource> sources;
  sources.push_back({service.cert_file,
                     service.key_file.empty() ? service.cert_file : service.key_file,
                     service.cert_pos, service.key_pos, report.prefix()});
  for (size_t i = 0; i < tls.certificates.size(); ++i) {
    const CertificateConfig& c = tls.certificates[i];
    sources.push_back({c.cert_file, c.key_file.empty() ? c.cert_file : c.key_file, c.cert_pos,
                       c.key_pos, report.prefix() + ".certificates[" + std::to_string(i) + "]"});
  }
  std::vector<std::optional<LoadedPair>> pairs;
  for (const PairSource& src : sources) {
    Reporter pair_report(report, src);
    pairs.push_back(load_pair(src, pair_report));
  }
  if (report.failed()) return std::nullopt;

  // Group by name set; the service's own pair starts the first (default) group.
  std::vector<PairGroup> groups;
  for (auto& pair : pairs) {
    std::vector<std::string> names = sorted(pair->names);
    auto group = std::find_if(groups.begin(), groups.end(),
                              [&](const PairGroup& g) { return g.names == names; });
    if (group == groups.end()) {
      groups.push_back({std::move(names), {}, nullptr});
      group = groups.end() - 1;
    }
    for (const LoadedPair* other : group->pairs) {
      if (key_slot(other->key.get()) == key_slot(pair->key.get())) {
        Reporter(report, *pair->source)
            .cert_error("same names and key type (" + key_slot(pair->key.get()) + ") as " +
                        other->source->prefix + ".cert: one would replace the other");
      }
    }
    group->pairs.push_back(&*pair);
  }
  if (report.failed()) return std::nullopt;

  ServerTlsContext result;
  if (!tls.alpn.empty()) result.alpn = std::make_unique<std::string>(alpn_wire(tls.alpn));
  std::vector<LoadedPair*> all;
  for (PairGroup& group : groups) {
    // Policy problems are reported once, for the main context; the others then succeed too.
    group.ctx = make_context(service, result.alpn.get(), groups.front().ctx ? nullptr : &report);
    if (!group.ctx) {
      if (!report.failed()) report.service_error("cannot build a TLS context for SNI");
      return std::nullopt;
    }
    for (LoadedPair* pair : group.pairs) {
      Reporter pair_report(report, *pair->source);
      // A context holds one pair per key slot.
      if (!use_cert_and_key(group.ctx.get(), pair->chain, pair->key.get(), pair_report)) {
        return std::nullopt;
      }
      all.push_back(pair);
    }
  }
  bool rsa = false, ecdsa = false;
  for (const LoadedPair* pair : all) {
    const std::string slot = key_slot(pair->key.get());
    rsa = rsa || slot == "RSA" || slot == "RSA-PSS";
    ecdsa = ecdsa || (slot != "RSA" && slot != "RSA-PSS");
  }
  check_tls12_ciphers(groups.front().ctx.get(), service, rsa, ecdsa, errors, warnings);
  if (report.failed()) return std::nullopt;

  result.ctx = std::move(groups.front().ctx);
  result.cert = std::move(pairs.front()->info);
  for (size_t i = 1; i < pairs.size(); ++i) result.extra_certs.push_back(std::move(pairs[i]->info));
  if (groups.size() > 1) {
    result.sni = std::make_unique<SniSelector>();
    result.sni->add(result.ctx.get(), groups.front().names);
    for (size_t i = 1; i < groups.size(); ++i) {
      result.sni->add(groups[i].ctx.get(), groups[i].names);
      result.sni_contexts.push_back(std::move(groups[i].ctx));
    }
    SSL_CTX_set_client_hello_cb(result.ctx.get(), on_client_hello, result.sni.get());
  }
  return result;
}

}  // namespace ferry
