#pragma once
// Reading PEM files and loading certificate/key pairs: the checks and messages that the server
// context, the client context and client authentication share.

#include <ctime>
#include <string>
#include <vector>

#include "core/openssl_ptr.h"

namespace ferry {

// Reads a whole PEM file (16 MiB at most). On failure returns false and sets `why` to the
// strerror() text or "file too large".
bool read_pem_file(const std::string& path, std::string& out, std::string& why);

// A pem_password_cb that never prompts on the terminal: encrypted keys are refused.
int no_passphrase(char* buf, int size, int rwflag, void* userdata);

// True if the last error on the queue says "no (more) PEM blocks of the wanted kind".
bool queue_ends_with_no_start_line();

// A read-only memory BIO over `data`, which must outlive it.
BioPtr memory_bio(const std::string& data);

// A file name as messages show it: in double quotes.
std::string quoted(const std::string& path);

// "2026-11-22T12:00:00Z"
std::string format_utc(std::time_t t);

// 0 if `t` is null or cannot be converted.
std::time_t asn1_time_to_unix(const ASN1_TIME* t);

// "CN=example.com,O=Example"; empty on failure.
std::string rfc2253_name(const X509_NAME* name);

// Leaf certificate plus the rest of the chain, as in SSL_CTX_use_certificate_chain_file().
struct CertChain {
  X509Ptr leaf;
  std::vector<X509Ptr> chain;
};

// Where the problems of a certificate/key pair go: at the configured cert or key.
class PairReport {
 public:
  virtual ~PairReport() = default;
  virtual void cert_error(std::string message) = 0;
  virtual void key_error(std::string message) = 0;
  virtual void key_warning(std::string message) = 0;
};

// Reads the certificate chain and its private key (once if both are in one file), checks the
// key file's permissions and that the key belongs to the leaf. Both files are read first so that
// a bad cert and a bad key are reported together. Returns false if an error was reported.
bool load_cert_and_key(const std::string& cert_file, const std::string& key_file, CertChain& chain,
                       EvpPkeyPtr& key, PairReport& report);

// Puts a loaded pair into `ctx`. Returns false after reporting an error.
bool use_cert_and_key(SSL_CTX* ctx, const CertChain& chain, EVP_PKEY* key, PairReport& report);

}  // namespace ferry
