#include "core/sni_selector.h"

#include <algorithm>
#include <cctype>
#include <memory>

#include <openssl/x509v3.h>

#include "config/config.h"
#include "core/openssl_ptr.h"

namespace ferry {
namespace {

using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Free<GENERAL_NAMES_free>>;

std::string asn1_text(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

}  // namespace

void SniSelector::add(SSL_CTX* ctx, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    if (name.starts_with("*.")) {
      wildcard_.emplace(name.substr(2), ctx);
    } else {
      exact_.emplace(name, ctx);
    }
  }
}

std::string normalized_server_name(std::string_view server_name) {
  if (server_name.ends_with('.')) server_name.remove_suffix(1);  // "example.com." is absolute
  return ascii_lower(server_name);
}

std::string_view wildcard_parent(std::string_view name) {
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0) return {};
  return name.substr(dot + 1);
}

SSL_CTX* SniSelector::select(std::string_view server_name) const {
  const std::string name = normalized_server_name(server_name);
  if (auto it = exact_.find(name); it != exact_.end()) return it->second;
  const std::string_view parent = wildcard_parent(name);
  if (parent.empty()) return nullptr;
  if (auto it = wildcard_.find(std::string(parent)); it != wildcard_.end()) return it->second;
  return nullptr;
}

std::vector<std::string> certificate_dns_names(X509* cert) {
  std::vector<std::string> names;
  GeneralNamesPtr sans(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
    if (gn->type == GEN_DNS) names.push_back(ascii_lower(asn1_text(gn->d.dNSName)));
  }
  if (!names.empty()) return names;
  const X509_NAME* subject = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index >= 0) {
    const X509_NAME_ENTRY* entry = X509_NAME_get_entry(subject, index);
    names.push_back(ascii_lower(asn1_text(X509_NAME_ENTRY_get_data(entry))));
  }
  return names;
}

std::string client_hello_server_name(SSL* ssl) {
  // ServerNameList: u16 length, then entries of (u8 type, u16 length, bytes); type 0 is
  // host_name, and a ClientHello carries at most one (RFC 6066, section 3).
  const unsigned char* p = nullptr;
  size_t len = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) != 1 || len < 2) {
    return {};
  }
  size_t list_len = (size_t{p[0]} << 8) | p[1];
  if (list_len + 2 != len) return {};
  p += 2;
  while (list_len >= 3) {
    const unsigned type = p[0];
    const size_t name_len = (size_t{p[1]} << 8) | p[2];
    if (name_len + 3 > list_len) return {};
    if (type == TLSEXT_NAMETYPE_host_name) {
      return std::string(reinterpret_cast<const char*>(p + 3), name_len);
    }
    p += 3 + name_len;
    list_len -= 3 + name_len;
  }
  return {};
}

}  // namespace ferry
