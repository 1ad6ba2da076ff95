#include "core/tls_context.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/handshake_failure.h"

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
constexpr size_t kMaxPemFileSize = 16 * 1024 * 1024;

using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Free<GENERAL_NAMES_free>>;

// Closes a file descriptor on every path out of read_whole_file().
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads a whole (small) file. On failure returns false and sets `why` to the strerror() text.
bool read_whole_file(const std::string& path, std::string& out, std::string& why) {
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

// Never prompt on the terminal for a passphrase: encrypted keys are refused.
int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*userdata*/) {
  return -1;
}

bool is_no_start_line(unsigned long err) {
  return ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
}

// True if the last error on the queue says "no (more) PEM blocks of the wanted kind".
bool queue_ends_with_no_start_line() {
  return is_no_start_line(ERR_peek_last_error());
}

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

BioPtr memory_bio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
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

int on_client_hello(SSL* ssl, int* /*alert*/, void* /*arg*/) {
  static char marker;
  SSL_set_ex_data(ssl, client_hello_seen_index(), &marker);
  return SSL_CLIENT_HELLO_SUCCESS;
}

// Collects the errors of one service with the right positions and keys.
class Reporter {
 public:
  Reporter(const ServiceConfig& service, std::vector<ConfigError>& errors,
           std::vector<ConfigError>& warnings)
      : service_(service), errors_(errors), warnings_(warnings) {}

  void cert_error(std::string message) {
    add(errors_, service_.cert_pos, "cert", std::move(message));
  }
  void key_error(std::string message) { add(errors_, service_.key_pos, "key", std::move(message)); }
  void cert_warning(std::string message) {
    add(warnings_, service_.cert_pos, "cert", std::move(message));
  }
  void key_warning(std::string message) {
    add(warnings_, service_.key_pos, "key", std::move(message));
  }
  void service_error(std::string message) {
    errors_.push_back({service_.pos, key_prefix(), std::move(message)});
  }
  bool failed() const { return errors_.size() != errors_at_start_; }

 private:
  std::string key_prefix() const { return "service[" + std::to_string(service_.index) + "]"; }
  void add(std::vector<ConfigError>& into, const SourcePos& pos, const char* what,
           std::string message) {
    into.push_back({pos, key_prefix() + "." + what, std::move(message)});
  }

  const ServiceConfig& service_;
  std::vector<ConfigError>& errors_;
  std::vector<ConfigError>& warnings_;
  size_t errors_at_start_ = errors_.size();
};

std::string quoted(const std::string& path) {
  return "\"" + path + "\"";
}

// A private key other users can read is refused; one its group can read is only a warning
// (e.g. root:ferry 0640, read by the service's group).
void check_key_permissions(const std::string& path, Reporter& report) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;  // it was just read: a race, nothing to add
  if ((st.st_mode & S_IROTH) != 0) {
    report.key_error("private key " + quoted(path) +
                     " is readable by other users (chmod 600 or 640)");
  } else if ((st.st_mode & S_IRGRP) != 0) {
    report.key_warning("private key " + quoted(path) + " is readable by its group");
  }
}

// Leaf certificate plus the rest of the chain, as in SSL_CTX_use_certificate_chain_file().
struct CertChain {
  X509Ptr leaf;
  std::vector<X509Ptr> chain;
};

bool parse_cert_chain(const std::string& pem, const std::string& path, CertChain& out,
                      Reporter& report) {
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

EvpPkeyPtr parse_private_key(const std::string& pem, const std::string& path, Reporter& report) {
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

}  // namespace

int client_hello_seen_index() {
  static const int index = [] {
    int i = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    if (i < 0) {
      std::fputs("ferry: SSL_get_ex_new_index failed\n", stderr);
      std::abort();
    }
    return i;
  }();
  return index;
}

bool client_hello_seen(const SSL* ssl) {
  return SSL_get_ex_data(ssl, client_hello_seen_index()) != nullptr;
}

std::optional<ServerTlsContext> build_server_tls_context(const ServiceConfig& service,
                                                         std::vector<ConfigError>& errors,
                                                         std::vector<ConfigError>& warnings) {
  Reporter report(service, errors, warnings);
  const std::string& key_path = service.key_file.empty() ? service.cert_file : service.key_file;

  // Load both files first so that a bad cert and a bad key are reported together.
  CertChain chain;
  std::string cert_pem, why;
  const bool cert_read = read_whole_file(service.cert_file, cert_pem, why);
  bool cert_ok = false;
  if (!cert_read) {
    report.cert_error("cannot read " + quoted(service.cert_file) + ": " + why);
  } else {
    cert_ok = parse_cert_chain(cert_pem, service.cert_file, chain, report);
  }

  EvpPkeyPtr key;
  if (key_path == service.cert_file) {
    // Same file: an unreadable file was reported once, for the cert.
    if (cert_read) key = parse_private_key(cert_pem, key_path, report);
  } else {
    std::string key_pem;
    if (!read_whole_file(key_path, key_pem, why)) {
      report.key_error("cannot read " + quoted(key_path) + ": " + why);
    } else {
      key = parse_private_key(key_pem, key_path, report);
    }
  }
  if (key) check_key_permissions(key_path, report);
  if (!cert_ok || !key) return std::nullopt;

  ERR_clear_error();
  if (X509_check_private_key(chain.leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    report.key_error("private key does not match the certificate");
    return std::nullopt;
  }

  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) {
    report.service_error("cannot create a TLS context: " + drain_openssl_errors());
    return std::nullopt;
  }
  if (!apply_policy(ctx.get(), service.name, why)) {
    report.service_error("cannot apply the TLS policy: " + why);
    return std::nullopt;
  }

  ERR_clear_error();
  if (SSL_CTX_use_certificate(ctx.get(), chain.leaf.get()) != 1) {
    report.cert_error("cannot use the certificate: " + drain_openssl_errors());
    return std::nullopt;
  }
  for (auto& extra : chain.chain) {
    ERR_clear_error();
    if (SSL_CTX_add0_chain_cert(ctx.get(), extra.get()) != 1) {
      report.cert_error("cannot use a chain certificate: " + drain_openssl_errors());
      return std::nullopt;
    }
    extra.release();  // owned by ctx now
  }
  ERR_clear_error();
  if (SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1 ||
      SSL_CTX_check_private_key(ctx.get()) != 1) {
    report.key_error("cannot use the private key: " + drain_openssl_errors());
    return std::nullopt;
  }

  CertificateInfo info;
  X509* leaf = chain.leaf.get();
  info.subject = rfc2253_name(X509_get_subject_name(leaf));
  info.sans = subject_alt_names(leaf);
  info.not_after = asn1_time_to_unix(X509_get0_notAfter(leaf));
  info.key_type = key_type_name(X509_get0_pubkey(leaf));
  std::time_t now = std::time(nullptr);
  std::time_t not_before = asn1_time_to_unix(X509_get0_notBefore(leaf));
  if (info.not_after < now) {
    info.expired = true;
    report.cert_warning("certificate expired on " + format_utc(info.not_after));
  } else if (not_before > now) {
    report.cert_warning("certificate is not valid before " + format_utc(not_before));
  }
  ERR_clear_error();

  if (report.failed()) return std::nullopt;
  return ServerTlsContext{std::move(ctx), std::move(info)};
}

}  // namespace ferry
