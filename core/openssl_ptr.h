#pragma once
// unique_ptr owners for OpenSSL objects: no bare *_free on paths that can return early.

#include <cstdio>
#include <cstdlib>
#include <memory>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace ferry {

template <auto FreeFn>
struct Free {
  template <typename T>
  void operator()(T* p) const noexcept {
    FreeFn(p);
  }
};

using SslCtxPtr = std::unique_ptr<SSL_CTX, Free<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, Free<SSL_free>>;
using BioPtr = std::unique_ptr<BIO, Free<BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, Free<X509_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, Free<EVP_PKEY_free>>;

// For the ex_data indexes ferry registers once at start: failing to get one means OpenSSL is
// out of memory before any connection exists, so there is nothing sensible to continue with.
inline int checked_ex_index(int index) {
  if (index < 0) {
    std::fputs("ferry: cannot allocate an OpenSSL ex_data index\n", stderr);
    std::abort();
  }
  return index;
}

}  // namespace ferry
