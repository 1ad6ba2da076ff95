#include "core/pem.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "core/handshake_failure.h"

namespace ferry {
namespace {

constexpr size_t kMaxPemFileSize = 16 * 1024 * 1024;

// Closes a file descriptor on every path out of read_pem_file().
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// True if `pem` has a "-----BEGIN ... PRIVATE KEY-----" line (PKCS#8, RSA, EC, encrypted).
bool has_private_key_block(std::string_view pem) {
  constexpr std::string_view kBegin = "-----BEGIN ";
  constexpr std::string_view kEnd = "PRIVATE KEY-----";
  size_t pos = 0;
  while ((pos = pem.find(kBegin, pos)) != std::string_view::npos) {
    size_t eol = pem.find('\n', pos);
    std::string_view line = pem.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() >= kEnd.size() && line.substr(line.size() - kEnd.size()) == kEnd) return true;
    pos += kBegin.size();
  }
  return false;
}

// A private key other users can read is refused; one its group can read is only a warning
// (e.g. root:ferry 0640, read by the service's group).
void check_key_permissions(const std::string& path, PairReport& report) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;  // it was just read: a race, nothing to add
  if ((st.st_mode & S_IROTH) != 0) {
    report.key_error("private key " + quoted(path) +
                     " is readable by other users (chmod 600 or 640)");
  } else if ((st.st_mode & S_IRGRP) != 0) {
    report.key_warning("private key " + quoted(path) + " is readable by its group");
  }
}

bool parse_cert_chain(const std::string& pem, const std::string& path, CertChain& out,
                      PairReport& report) {
  BioPtr bio = memory_bio(pem);
  if (!bio) {
    report.cert_error("cannot parse: " + drain_openssl_errors());
    return false;
  }
  ERR_clear_error();
  out.leaf.reset(PEM_read_bio_X509_AUX(bio.get(), nullptr, no_passphrase, nullptr));
  if (!out.leaf) {
    if (queue_ends_with_no_start_line()) {
      ERR_clear_error();
      report.cert_error("no certificate found in " + quoted(path));
    } else {
      report.cert_error("cannot parse: " + drain_openssl_errors());
    }
    return false;
  }
  for (;;) {
    ERR_clear_error();
    X509Ptr next(PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
    if (!next) break;
    out.chain.push_back(std::move(next));
  }
  if (!queue_ends_with_no_start_line()) {
    report.cert_error("cannot parse: " + drain_openssl_errors());
    return false;
  }
  ERR_clear_error();
  return true;
}

EvpPkeyPtr parse_private_key(const std::string& pem, const std::string& path, PairReport& report) {
  BioPtr bio = memory_bio(pem);
  if (!bio) {
    report.key_error("cannot parse: " + drain_openssl_errors());
    return nullptr;
  }
  ERR_clear_error();
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (key) {
    ERR_clear_error();
    return key;
  }
  unsigned long last = ERR_peek_last_error();
  if (!has_private_key_block(pem)) {
    // OpenSSL 3's decoders report a missing key as "unsupported": look for the block ourselves.
    ERR_clear_error();
    report.key_error("no private key found in " + quoted(path));
  } else if (ERR_GET_LIB(last) == ERR_LIB_PEM &&
             (ERR_GET_REASON(last) == PEM_R_BAD_PASSWORD_READ ||
              ERR_GET_REASON(last) == PEM_R_PROBLEMS_GETTING_PASSWORD)) {
    ERR_clear_error();
    report.key_error("private key in " + quoted(path) +
                     " is encrypted; ferry needs it unencrypted");
  } else {
    report.key_error("cannot parse: " + drain_openssl_errors());
  }
  return nullptr;
}

}  // namespace

bool read_pem_file(const std::string& path, std::string& out, std::string& why) {
  FdCloser file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    why = std::strerror(errno);
    return false;
  }
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(file.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      why = std::strerror(errno);
      return false;
    }
    if (n == 0) return true;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxPemFileSize) {
      why = "file too large";
      return false;
    }
  }
}

int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*userdata*/) {
  return -1;
}

bool queue_ends_with_no_start_line() {
  unsigned long err = ERR_peek_last_error();
  return ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
}

BioPtr memory_bio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string quoted(const std::string& path) {
  return "\"" + path + "\"";
}

std::string format_utc(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::time_t asn1_time_to_unix(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return timegm(&tm);
}

std::string rfc2253_name(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

bool load_cert_and_key(const std::string& cert_file, const std::string& key_file, CertChain& chain,
                       EvpPkeyPtr& key, PairReport& report) {
  std::string cert_pem, why;
  const bool cert_read = read_pem_file(cert_file, cert_pem, why);
  bool cert_ok = false;
  if (!cert_read) {
    report.cert_error("cannot read " + quoted(cert_file) + ": " + why);
  } else {
    cert_ok = parse_cert_chain(cert_pem, cert_file, chain, report);
  }

  if (key_file == cert_file) {
    // Same file: an unreadable file was reported once, for the cert.
    if (cert_read) key = parse_private_key(cert_pem, key_file, report);
  } else {
    std::string key_pem;
    if (!read_pem_file(key_file, key_pem, why)) {
      report.key_error("cannot read " + quoted(key_file) + ": " + why);
    } else {
      key = parse_private_key(key_pem, key_file, report);
    }
  }
  if (key) check_key_permissions(key_file, report);
  if (!cert_ok || !key) return false;

  ERR_clear_error();
  if (X509_check_private_key(chain.leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    report.key_error("private key does not match the certificate");
    return false;
  }
  return true;
}

bool use_cert_and_key(SSL_CTX* ctx, const CertChain& chain, EVP_PKEY* key, PairReport& report) {
  ERR_clear_error();
  if (SSL_CTX_use_certificate(ctx, chain.leaf.get()) != 1) {
    report.cert_error("cannot use the certificate: " + drain_openssl_errors());
    return false;
  }
  for (const auto& extra : chain.chain) {
    ERR_clear_error();
    if (SSL_CTX_add1_chain_cert(ctx, extra.get()) != 1) {
      report.cert_error("cannot use a chain certificate: " + drain_openssl_errors());
      return false;
    }
  }
  ERR_clear_error();
  if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    report.key_error("cannot use the private key: " + drain_openssl_errors());
    return false;
  }
  return true;
}

}  // namespace ferry
