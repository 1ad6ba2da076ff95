#include "core/client_auth.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/openssl_ptr.h"
#include "core/pem.h"

namespace ferry {
namespace {

using X509StorePtr = std::unique_ptr<X509_STORE, Free<X509_STORE_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, Free<X509_CRL_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Free<GENERAL_NAMES_free>>;

struct NameStackFree {
  void operator()(STACK_OF(X509_NAME) * names) const noexcept {
    sk_X509_NAME_pop_free(names, X509_NAME_free);
  }
};
using NameStackPtr = std::unique_ptr<STACK_OF(X509_NAME), NameStackFree>;

int compare_names(const X509_NAME* const* a, const X509_NAME* const* b) {
  return X509_NAME_cmp(*a, *b);
}

std::string_view asn1_view(const ASN1_STRING* s) {
  return {reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
          static_cast<size_t>(ASN1_STRING_length(s))};
}

bool equal_ignoring_ascii_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
           return lower(x) == lower(y);
         });
}

// The allow-lists of a context, checked after chain verification. Owned by the SSL_CTX
// (ex_data, deleted with it); its presence also marks a context set up by
// configure_client_auth().
struct AllowList {
  std::vector<std::string> subjects;  // RFC 2253, compared exactly
  std::vector<std::string> dns;       // compared ignoring ASCII case, no wildcard expansion
  std::vector<std::string> uris;      // compared exactly
  std::vector<std::string> ips;       // 4 or 16 raw bytes

  bool empty() const { return subjects.empty() && dns.empty() && uris.empty() && ips.empty(); }
  bool permits(X509* cert) const;
};

// An allow_sans entry is an IP address if it parses as one (brackets allowed for IPv6), a URI
// if it has a ':' (DNS names never do), else a DNS name.
void add_allowed_san(AllowList& list, const std::string& entry) {
  std::string host = entry;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  unsigned char addr[16];
  if (inet_pton(AF_INET, host.c_str(), addr) == 1) {
    list.ips.emplace_back(reinterpret_cast<const char*>(addr), 4);
  } else if (inet_pton(AF_INET6, host.c_str(), addr) == 1) {
    list.ips.emplace_back(reinterpret_cast<const char*>(addr), 16);
  } else if (entry.find(':') != std::string::npos) {
    list.uris.push_back(entry);
  } else {
    list.dns.push_back(entry);
  }
}

bool AllowList::permits(X509* cert) const {
  if (!subjects.empty()) {
    const std::string subject = rfc2253_name(X509_get_subject_name(cert));
    if (std::find(subjects.begin(), subjects.end(), subject) != subjects.end()) return true;
  }
  if (dns.empty() && uris.empty() && ips.empty()) return false;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return false;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    const std::vector<std::string>* candidates = nullptr;
    std::string_view value;
    switch (gn->type) {
      case GEN_DNS:
        value = asn1_view(gn->d.dNSName);
        if (std::any_of(dns.begin(), dns.end(), [&](const std::string& d) {
              return equal_ignoring_ascii_case(d, value);
            })) {
          return true;
        }
        continue;
      case GEN_URI:
        candidates = &uris;
        value = asn1_view(gn->d.uniformResourceIdentifier);
        break;
      case GEN_IPADD:
        candidates = &ips;
        value = asn1_view(gn->d.iPAddress);
        break;
      default:
        continue;
    }
    if (std::find(candidates->begin(), candidates->end(), value) != candidates->end()) return true;
  }
  return false;
}

void free_allow_list(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/,
                     long /*argl*/, void* /*argp*/) {
  delete static_cast<AllowList*>(ptr);
}

// SSL_CTX slot: the AllowList.
int allow_list_index() {
  static const int index =
      checked_ex_index(SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_allow_list));
  return index;
}

// SSL slot: the first client-authentication failure, stored as the reason + 1 (no allocation).
int failure_index() {
  static const int index =
      checked_ex_index(SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr));
  return index;
}

void record_failure(SSL* ssl, HandshakeFailure reason) {
  if (SSL_get_ex_data(ssl, failure_index()) != nullptr) return;  // the first reason wins
  SSL_set_ex_data(ssl, failure_index(),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(reason) + 1));
}

// Chain verification runs first; at depth 0, once the whole chain is good, the allow-lists.
// Returning 0 aborts the handshake with the alert OpenSSL derives from the X509 error.
int verify_client_cert(int preverify_ok, X509_STORE_CTX* store) {
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl == nullptr) return preverify_ok;
  if (preverify_ok != 1) {
    HandshakeFailure reason = classify_verify_result(X509_STORE_CTX_get_error(store));
    record_failure(ssl,
                   reason == HandshakeFailure::other ? HandshakeFailure::bad_certificate : reason);
    return 0;
  }
  if (X509_STORE_CTX_get_error_depth(store) != 0) return 1;
  // The context the handshake runs on now (SNI may have switched it) supplied the trust store;
  // its allow-lists apply. A context without them was not set up for client auth: refuse.
  const auto* allow =
      static_cast<const AllowList*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), allow_list_index()));
  if (allow == nullptr) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    record_failure(ssl, HandshakeFailure::bad_certificate);
    return 0;
  }
  if (allow->empty() || allow->permits(X509_STORE_CTX_get_current_cert(store))) return 1;
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  record_failure(ssl, HandshakeFailure::not_allowed);
  return 0;
}

// Loads every certificate of `pem` into `store` and their subjects into `names`.
// Returns an empty string or the error message.
std::string load_cas(const std::string& pem, const std::string& path, X509_STORE* store,
                     STACK_OF(X509_NAME) * names) {
  BioPtr bio = memory_bio(pem);
  if (!bio) return "cannot parse " + quoted(path) + ": " + drain_openssl_errors();
  int count = 0;
  for (;;) {
    ERR_clear_error();
    X509Ptr cert(PEM_read_bio_X509_AUX(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    ++count;
    if (X509_STORE_add_cert(store, cert.get()) != 1) {
      return "cannot use a certificate of " + quoted(path) + ": " + drain_openssl_errors();
    }
    const X509_NAME* subject = X509_get_subject_name(cert.get());
    if (sk_X509_NAME_find(names, const_cast<X509_NAME*>(subject)) < 0) {
      X509_NAME* copy = X509_NAME_dup(subject);
      if (copy == nullptr || sk_X509_NAME_push(names, copy) <= 0) {
        X509_NAME_free(copy);
        return "cannot parse " + quoted(path) + ": " + drain_openssl_errors();
      }
    }
  }
  if (!queue_ends_with_no_start_line()) {
    return "cannot parse " + quoted(path) + ": " + drain_openssl_errors();
  }
  ERR_clear_error();
  if (count == 0) return "no CA certificate found in " + quoted(path);
  return {};
}

// Loads every CRL of `pem` into `store`. Returns an empty string or the error message.
std::string load_crls(const std::string& pem, const std::string& path, X509_STORE* store) {
  BioPtr bio = memory_bio(pem);
  if (!bio) return "cannot parse " + quoted(path) + ": " + drain_openssl_errors();
  int count = 0;
  for (;;) {
    ERR_clear_error();
    X509CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
    if (!crl) break;
    ++count;
    if (X509_STORE_add_crl(store, crl.get()) != 1) {
      return "cannot use a CRL of " + quoted(path) + ": " + drain_openssl_errors();
    }
  }
  if (!queue_ends_with_no_start_line()) {
    return "cannot parse " + quoted(path) + ": " + drain_openssl_errors();
  }
  ERR_clear_error();
  if (count == 0) return "no CRL found in " + quoted(path);
  return {};
}

// Sessions must only resume under the client-authentication policy they were verified with:
// a session from before client_ca, a CRL entry or an allow-list change must not skip the
// check. The session id context becomes a digest of the service name and that policy.
bool set_session_context(SSL_CTX* ctx, const ServiceConfig& service, const std::string& ca_pem,
                         const std::string& crl_pem) {
  std::string id = "ferry service " + service.name;
  id.push_back('\0');
  id += "client-auth ";
  id += std::to_string(static_cast<int>(service.tls.verify_client));
  for (const std::string* part : {&ca_pem, &crl_pem}) {
    id.push_back('\0');
    id += *part;
  }
  for (const auto* list : {&service.tls.allow_subjects, &service.tls.allow_sans}) {
    id.push_back('\0');
    for (const auto& entry : *list) {
      id += entry;
      id.push_back('\n');
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  return EVP_Digest(id.data(), id.size(), digest, &len, EVP_sha256(), nullptr) == 1 &&
         len <= SSL_MAX_SID_CTX_LENGTH && SSL_CTX_set_session_id_context(ctx, digest, len) == 1;
}

}  // namespace

bool configure_client_auth(SSL_CTX* ctx, const ServiceConfig& service,
                           std::vector<ConfigError>& errors,
                           std::vector<ConfigError>& /*warnings*/) {
  const TlsPolicy& tls = service.tls;
  if (tls.client_ca.empty() || tls.verify_client == VerifyClient::none) return true;
  const std::string prefix = "service[" + std::to_string(service.index) + "]";
  auto error = [&](const SourcePos& pos, const char* key, std::string message) {
    errors.push_back({pos, prefix + "." + key, std::move(message)});
  };

  ERR_clear_error();
  X509StorePtr store(X509_STORE_new());
  NameStackPtr names(sk_X509_NAME_new(compare_names));
  if (!store || !names) {
    errors.push_back({service.pos, prefix, "out of memory: " + drain_openssl_errors()});
    return false;
  }

  bool ok = true;
  std::string ca_pem, why;
  if (!read_pem_file(tls.client_ca, ca_pem, why)) {
    error(tls.client_ca_pos, "client_ca", "cannot read " + quoted(tls.client_ca) + ": " + why);
    ok = false;
  } else if (std::string e = load_cas(ca_pem, tls.client_ca, store.get(), names.get());
             !e.empty()) {
    error(tls.client_ca_pos, "client_ca", std::move(e));
    ok = false;
  }

  std::string crl_pem;
  if (!tls.crl.empty()) {
    if (!read_pem_file(tls.crl, crl_pem, why)) {
      error(tls.crl_pos, "crl", "cannot read " + quoted(tls.crl) + ": " + why);
      ok = false;
    } else if (std::string e = load_crls(crl_pem, tls.crl, store.get()); !e.empty()) {
      error(tls.crl_pos, "crl", std::move(e));
      ok = false;
    } else {
      // The leaf's issuer must have a CRL in the file (a missing one fails verification).
      // Intermediates are not checked: their CRLs would all have to be in the file too.
      X509_STORE_set_flags(store.get(), X509_V_FLAG_CRL_CHECK);
    }
  }
  if (!ok) return false;

  auto allow = std::make_unique<AllowList>();
  allow->subjects = tls.allow_subjects;
  for (const auto& san : tls.allow_sans) add_allowed_san(*allow, san);

  ERR_clear_error();
  // A store of its own, so the client CAs never take part in building the server's chain.
  if (SSL_CTX_set1_verify_cert_store(ctx, store.get()) != 1 ||
      !set_session_context(ctx, service, ca_pem, crl_pem)) {
    errors.push_back({service.pos, prefix,
                      "cannot set up client certificate verification: " + drain_openssl_errors()});
    return false;
  }
  auto* old = static_cast<AllowList*>(SSL_CTX_get_ex_data(ctx, allow_list_index()));
  if (SSL_CTX_set_ex_data(ctx, allow_list_index(), allow.get()) != 1) {
    errors.push_back({service.pos, prefix,
                      "cannot set up client certificate verification: " + drain_openssl_errors()});
    return false;
  }
  allow.release();  // owned by ctx now, deleted by free_allow_list
  delete old;
  SSL_CTX_set_client_CA_list(ctx, names.release());  // the CA names sent in the request
  int mode = SSL_VERIFY_PEER;
  if (tls.verify_client == VerifyClient::required) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(ctx, mode, verify_client_cert);
  return true;
}

std::optional<HandshakeFailure> client_auth_failure(const SSL* ssl) {
  if (ssl == nullptr || SSL_is_server(ssl) != 1) return std::nullopt;
  if (void* stored = SSL_get_ex_data(ssl, failure_index()); stored != nullptr) {
    return static_cast<HandshakeFailure>(reinterpret_cast<uintptr_t>(stored) - 1);
  }
  // No certificate when one is required: OpenSSL fails while processing the client's (empty)
  // Certificate message without calling the verify callback. The state machine is left on that
  // message, and there is no peer certificate.
  const int mode = SSL_get_verify_mode(ssl);
  if ((mode & SSL_VERIFY_PEER) != 0 && (mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT) != 0 &&
      SSL_get_state(ssl) == TLS_ST_SR_CERT && SSL_get0_peer_certificate(ssl) == nullptr) {
    return HandshakeFailure::no_client_cert;
  }
  return std::nullopt;
}

}  // namespace ferry
