#pragma once
// Test-only helpers: generate keys and certificates in-process with the OpenSSL API and write
// them as PEM into a temporary directory, so tests never depend on files in the repo.

#include <atomic>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/openssl_ptr.h"

namespace ferry::test {

enum class KeyKind { ec_p256, ec_p384, rsa2048, ed25519 };

inline EvpPkeyPtr make_key(KeyKind kind) {
  EVP_PKEY* key = nullptr;
  switch (kind) {
    case KeyKind::ec_p256:
      key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
      break;
    case KeyKind::ec_p384:
      key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
      break;
    case KeyKind::rsa2048:
      key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
      break;
    case KeyKind::ed25519:
      key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
      break;
  }
  if (key == nullptr) throw std::runtime_error("key generation failed");
  return EvpPkeyPtr(key);
}

// What to put into a generated certificate. Times are Unix times.
struct CertSpec {
  std::string cn = "localhost";
  std::string org;                                                    // O=..., omitted when empty
  std::vector<std::string> sans = {"DNS:localhost", "IP:127.0.0.1"};  // x509v3 config syntax
  std::time_t not_before = std::time(nullptr) - 3600;
  std::time_t not_after = std::time(nullptr) + 365 * 86400;
  bool is_ca = false;
};

// A certificate for `key`, self-signed unless `issuer` / `issuer_key` are given.
inline X509Ptr make_cert(const CertSpec& spec, EVP_PKEY* key, X509* issuer = nullptr,
                         EVP_PKEY* issuer_key = nullptr) {
  static std::atomic<long> serial{1};
  X509Ptr cert(X509_new());
  if (!cert) throw std::runtime_error("X509_new failed");
  X509* x = cert.get();
  bool ok = X509_set_version(x, X509_VERSION_3) == 1 &&
            ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) == 1 &&
            ASN1_TIME_set(X509_getm_notBefore(x), spec.not_before) != nullptr &&
            ASN1_TIME_set(X509_getm_notAfter(x), spec.not_after) != nullptr &&
            X509_set_pubkey(x, key) == 1;
  X509_NAME* name = X509_get_subject_name(x);
  if (!spec.org.empty()) {
    ok = ok && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                          reinterpret_cast<const unsigned char*>(spec.org.c_str()),
                                          -1, -1, 0) == 1;
  }
  ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                        reinterpret_cast<const unsigned char*>(spec.cn.c_str()), -1,
                                        -1, 0) == 1;
  ok = ok && X509_set_issuer_name(x, issuer != nullptr ? X509_get_subject_name(issuer) : name) == 1;
  if (!ok) throw std::runtime_error("filling the certificate failed");

  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer != nullptr ? issuer : x, x, nullptr, nullptr, 0);
  auto add_ext = [&](int nid, const std::string& value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
    if (ext == nullptr) throw std::runtime_error("bad extension: " + value);
    int added = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (added != 1) throw std::runtime_error("X509_add_ext failed");
  };
  add_ext(NID_basic_constraints, spec.is_ca ? "critical,CA:TRUE" : "CA:FALSE");
  if (spec.is_ca) add_ext(NID_key_usage, "critical,keyCertSign,cRLSign");
  if (!spec.sans.empty()) {
    std::string joined;
    for (const auto& san : spec.sans) joined += (joined.empty() ? "" : ",") + san;
    add_ext(NID_subject_alt_name, joined);
  }

  EVP_PKEY* signer = issuer_key != nullptr ? issuer_key : key;
  int id = EVP_PKEY_get_base_id(signer);
  const EVP_MD* md = (id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448) ? nullptr : EVP_sha256();
  if (X509_sign(x, signer, md) <= 0) throw std::runtime_error("X509_sign failed");
  return cert;
}

inline std::string bio_to_string(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

inline std::string to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) throw std::runtime_error("PEM cert");
  return bio_to_string(bio.get());
}

inline std::string to_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    throw std::runtime_error("PEM key");
  return bio_to_string(bio.get());
}

// PKCS#8, AES-256-CBC with the given passphrase.
inline std::string to_encrypted_pem(EVP_PKEY* key, const std::string& passphrase) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PKCS8PrivateKey(bio.get(), key, EVP_aes_256_cbc(), passphrase.data(),
                                    static_cast<int>(passphrase.size()), nullptr, nullptr) != 1)
    throw std::runtime_error("PEM encrypted key");
  return bio_to_string(bio.get());
}

using X509CrlPtr = std::unique_ptr<X509_CRL, Free<X509_CRL_free>>;

// A CRL issued by `ca` (signed with `ca_key`) listing `revoked` by serial number. Times are Unix
// times; the CRL is current by default.
inline X509CrlPtr make_crl(X509* ca, EVP_PKEY* ca_key, const std::vector<X509*>& revoked,
                           std::time_t last_update = std::time(nullptr) - 3600,
                           std::time_t next_update = std::time(nullptr) + 7 * 86400) {
  X509CrlPtr crl(X509_CRL_new());
  if (!crl) throw std::runtime_error("X509_CRL_new failed");
  using AsnTimePtr = std::unique_ptr<ASN1_TIME, Free<ASN1_TIME_free>>;
  AsnTimePtr last(ASN1_TIME_set(nullptr, last_update));
  AsnTimePtr next(ASN1_TIME_set(nullptr, next_update));
  bool ok = last && next && X509_CRL_set_version(crl.get(), 1) == 1 &&
            X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca)) == 1 &&
            X509_CRL_set1_lastUpdate(crl.get(), last.get()) == 1 &&
            X509_CRL_set1_nextUpdate(crl.get(), next.get()) == 1;
  for (X509* cert : revoked) {
    if (!ok) break;
    X509_REVOKED* entry = X509_REVOKED_new();
    ok = entry != nullptr &&
         X509_REVOKED_set_serialNumber(entry, X509_get_serialNumber(cert)) == 1 &&
         X509_REVOKED_set_revocationDate(entry, last.get()) == 1 &&
         X509_CRL_add0_revoked(crl.get(), entry) == 1;
    if (!ok) X509_REVOKED_free(entry);
  }
  ok = ok && X509_CRL_sort(crl.get()) == 1 && X509_CRL_sign(crl.get(), ca_key, EVP_sha256()) > 0;
  if (!ok) throw std::runtime_error("making the CRL failed");
  return crl;
}

inline std::string to_pem(X509_CRL* crl) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_CRL(bio.get(), crl) != 1) throw std::runtime_error("PEM CRL");
  return bio_to_string(bio.get());
}

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ferry-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

  // Writes `content` to `name` inside the directory and returns the full path. The file gets
  // mode 0600, as ferry requires for private keys (ofstream would leave 0644 under umask 022).
  std::string write(const std::string& name, const std::string& content) const {
    std::string full = file(name);
    std::ofstream out(full, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    if (!out) throw std::runtime_error("cannot write " + full);
    chmod(full, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return full;
  }

  static void chmod(const std::string& path, std::filesystem::perms mode) {
    std::filesystem::permissions(path, mode, std::filesystem::perm_options::replace);
  }

 private:
  std::filesystem::path path_;
};

}  // namespace ferry::test
