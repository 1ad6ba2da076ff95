#include "core/tls_policy.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include <openssl/err.h>

#include "core/handshake_failure.h"
#include "core/openssl_ptr.h"

namespace ferry {
namespace {

std::string key_of(const ServiceConfig& service, const char* name) {
  return "service[" + std::to_string(service.index) + "]." + name;
}

std::string quoted(const std::string& text) {
  return "\"" + text + "\"";
}

// ALPN, server preference: the first of the server's protocols the client offers. `arg` is the
// server's list in wire format, which outlives the context; the selection points into it.
int on_alpn_select(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
                   const unsigned char* in, unsigned int inlen, void* arg) {
  const auto* server = static_cast<const std::string*>(arg);
  unsigned char* selected = nullptr;
  if (inlen == 0 || SSL_select_next_proto(&selected, outlen,
                                          reinterpret_cast<const unsigned char*>(server->data()),
                                          static_cast<unsigned int>(server->size()), in,
                                          inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of(":,", start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

std::vector<const SSL_CIPHER*> ciphers_of(STACK_OF(SSL_CIPHER) * stack, bool tls13) {
  std::vector<const SSL_CIPHER*> out;
  for (int i = 0; i < sk_SSL_CIPHER_num(stack); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(stack, i);
    if ((std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0) == tls13) out.push_back(c);
  }
  return out;
}

}  // namespace

bool apply_tls_policy_keys(SSL_CTX* ctx, const ServiceConfig& service, const std::string* alpn,
                           std::vector<ConfigError>* errors) {
  const TlsPolicy& tls = service.tls;
  bool ok = true;
  auto fail = [&](const SourcePos& pos, const char* name, std::string message) {
    if (errors != nullptr) errors->push_back({pos, key_of(service, name), std::move(message)});
    ok = false;
  };

  ERR_clear_error();
  if ((tls.min_version != 0 && SSL_CTX_set_min_proto_version(ctx, tls.min_version) != 1) ||
      (tls.max_version != 0 && SSL_CTX_set_max_proto_version(ctx, tls.max_version) != 1)) {
    fail(tls.min_version != 0 ? tls.min_version_pos : tls.max_version_pos,
         tls.min_version != 0 ? "min_version" : "max_version",
         "cannot be applied: " + drain_openssl_errors());
  }

  if (!tls.ciphersuites.empty()) {
    ERR_clear_error();
    if (SSL_CTX_set_ciphersuites(ctx, tls.ciphersuites.c_str()) != 1) {
      fail(tls.ciphersuites_pos, "ciphersuites", "cannot be applied: " + drain_openssl_errors());
    } else {
      // OpenSSL skips names it does not know: name them instead.
      std::vector<std::string> known;
      for (const SSL_CIPHER* c : ciphers_of(SSL_CTX_get_ciphers(ctx), true)) {
        known.emplace_back(SSL_CIPHER_get_name(c));
      }
      for (const std::string& item : split_list(tls.ciphersuites)) {
        if (std::find(known.begin(), known.end(), item) == known.end()) {
          fail(tls.ciphersuites_pos, "ciphersuites",
               "unknown TLS 1.3 cipher suite " + quoted(item));
        }
      }
      if (known.empty() && ok) {
        fail(tls.ciphersuites_pos, "ciphersuites", "matches no TLS 1.3 cipher suite");
      }
    }
  }

  if (!tls.ciphers.empty()) {
    ERR_clear_error();
    if (SSL_CTX_set_cipher_list(ctx, tls.ciphers.c_str()) != 1) {
      ERR_clear_error();
      fail(tls.ciphers_pos, "ciphers", "matches no usable cipher");
    }
  }

  if (!tls.groups.empty()) {
    for (const std::string& group : split_list(tls.groups)) {
      ERR_clear_error();
      if (SSL_CTX_set1_groups_list(ctx, group.c_str()) != 1) {
        ERR_clear_error();
        fail(tls.groups_pos, "groups", "unknown group " + quoted(group));
      }
    }
    ERR_clear_error();
    if (ok && SSL_CTX_set1_groups_list(ctx, tls.groups.c_str()) != 1) {
      fail(tls.groups_pos, "groups", "cannot be applied: " + drain_openssl_errors());
    }
  }

  if (alpn != nullptr)
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, const_cast<std::string*>(alpn));
  if (tls.record_padding > 0 && SSL_CTX_set_block_padding(ctx, tls.record_padding) != 1) {
    ERR_clear_error();
    fail(tls.record_padding_pos, "record_padding", "cannot be applied");
  }
  ERR_clear_error();
  return ok;
}

std::string alpn_wire(const std::vector<std::string>& protocols) {
  std::string wire;
  for (const std::string& p : protocols) {
    wire.push_back(static_cast<char>(p.size()));  // 1..255, checked by the loader
    wire += p;
  }
  return wire;
}

void check_tls12_ciphers(SSL_CTX* ctx, const ServiceConfig& service, bool rsa, bool ecdsa,
                         std::vector<ConfigError>& errors, std::vector<ConfigError>& warnings) {
  const TlsPolicy& tls = service.tls;
  if (tls.ciphers.empty() || tls.min_version == TLS1_3_VERSION) return;
  SslPtr probe(SSL_new(ctx));
  STACK_OF(SSL_CIPHER)* supported = probe ? SSL_get1_supported_ciphers(probe.get()) : nullptr;
  std::string weak;
  size_t usable = 0;
  for (const SSL_CIPHER* c : ciphers_of(supported, false)) {
    const int auth = SSL_CIPHER_get_auth_nid(c);
    if (!((auth == NID_auth_rsa && rsa) || (auth == NID_auth_ecdsa && ecdsa))) continue;
    ++usable;
    const int kx = SSL_CIPHER_get_kx_nid(c);
    const bool fs = kx == NID_kx_ecdhe || kx == NID_kx_dhe;
    const bool aead = SSL_CIPHER_is_aead(c) == 1;
    if (fs && aead) continue;
    weak += std::string(weak.empty() ? "" : ", ") + SSL_CIPHER_get_name(c) + " (" +
            (fs ? "" : "no forward secrecy") + (fs || aead ? "" : ", ") + (aead ? "" : "not AEAD") +
            ")";
  }
  sk_SSL_CIPHER_free(supported);
  ERR_clear_error();
  if (usable == 0) {
    errors.push_back({tls.ciphers_pos, key_of(service, "ciphers"), "matches no usable cipher"});
  } else if (!weak.empty()) {
    warnings.push_back(
        {tls.ciphers_pos, key_of(service, "ciphers"), "admits suites that are weak: " + weak});
  }
}

}  // namespace ferry
