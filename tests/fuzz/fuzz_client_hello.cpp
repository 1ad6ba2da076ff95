// Hostile bytes from a TLS client, as ferry's server side sees them: one SSL from ferry's real
// server context per input, the input in its read BIO, one SSL_do_handshake, then the same
// failure classification connection.cpp does.
//
// The service is built once, through the real loader and build_runtime, from the fixed test PKI
// in tests/fuzz/certs/ (see make-certs.sh) with everything that installs a callback turned on,
// so the inputs reach ferry's code inside the handshake:
//   - the ClientHello callback choosing a certificate by SNI (exact "rsa.fuzz.test", wildcard
//     "*.wild.fuzz.test", else the default EC + RSA pair for localhost);
//   - the SNI gate of a service with [[service.route]]s and no default `connect`, as
//     Connection::route_gate does it: a name without a route (or no SNI) is refused with
//     unrecognized_name (the Router's case-folding and wildcard matching on wire bytes);
//   - the ALPN selection callback (h2, http/1.1);
//   - client-certificate verification with a CA, a CRL and allow-lists (verify_client =
//     optional, so a TLS 1.2 client's plaintext Certificate message is verified right away);
//   - the session-ticket key callback with keys from a file (tickets in a ClientHello are looked
//     up by key name);
//   - record padding.
// Seeds in corpus/fuzz_client_hello/ are real client flights captured by make_seeds.py.

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "core/backend.h"
#include "core/client_auth.h"
#include "core/handshake_failure.h"
#include "core/runtime.h"
#include "core/tls_context.h"
#include "tests/core/test_certs.h"
#include "tests/fuzz/fuzz_invariant.h"

#ifndef FERRY_FUZZ_CERT_DIR
#error "FERRY_FUZZ_CERT_DIR must name tests/fuzz/certs"
#endif

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  if (!in) {
    std::fprintf(stderr, "fuzz_client_hello: cannot read %s\n", path.c_str());
    std::abort();
  }
  return out.str();
}

// The service, as an operator would write it. Paths are relative to the config file.
constexpr const char* kConfig = R"(
[[service]]
name = "fuzz"
accept = "127.0.0.1:8443"
cert = "server-ec.crt"
key = "server-ec.key"
alpn = ["h2", "http/1.1"]
client_ca = "ca.crt"
verify_client = "optional"
crl = "crl.pem"
allow_subjects = ["CN=client,O=ferry fuzz"]
allow_sans = ["client.fuzz.test", "spiffe://fuzz.test/client", "127.0.0.1"]
ticket_key_file = "tickets.keys"
record_padding = 256

[[service.certificates]]
cert = "server-rsa.crt"
key = "server-rsa.key"

[[service.certificates]]
cert = "sni-rsa.crt"
key = "sni-rsa.key"

[[service.certificates]]
cert = "sni-wild.crt"
key = "sni-wild.key"

[[service.route]]
sni = "localhost"
connect = "127.0.0.1:8080"

[[service.route]]
sni = "rsa.fuzz.test"
connect = "127.0.0.1:8081"

[[service.route]]
sni = "*.wild.fuzz.test"
connect = ["127.0.0.1:8082", "127.0.0.1:8083"]
)";

constexpr const char* kFiles[] = {"ca.crt",         "crl.pem",       "tickets.keys",
                                  "server-ec.crt",  "server-ec.key", "server-rsa.crt",
                                  "server-rsa.key", "sni-rsa.crt",   "sni-rsa.key",
                                  "sni-wild.crt",   "sni-wild.key"};

void fail(const char* what, const std::vector<ferry::ConfigError>& errors) {
  std::fprintf(stderr, "fuzz_client_hello: %s\n", what);
  for (const auto& e : errors) std::fprintf(stderr, "  %s\n", e.str().c_str());
  std::abort();
}

// Built on first use and kept for the whole run (its SNI contexts and callback data with it).
const ferry::ServiceRuntime& service() {
  static const std::shared_ptr<const ferry::Runtime> runtime = [] {
    // Copies in a private directory: git does not keep the keys' 0600, which ferry checks.
    ferry::test::TempDir dir;
    for (const char* name : kFiles) {
      dir.write(name, read_file(std::string(FERRY_FUZZ_CERT_DIR) + "/" + name));
    }
    const ferry::LoadResult loaded = ferry::load_config_string(kConfig, dir.file("ferry.toml"));
    if (!loaded.config) fail("the fuzz config does not load", loaded.errors);
    ferry::RuntimeResult built = ferry::build_runtime(*loaded.config, nullptr);
    if (!built.runtime) fail("build_runtime failed", built.errors);
    return built.runtime;
  }();
  const ferry::ServiceRuntime& s = runtime->services.at(0);
  if (!s.tls || s.backends || s.router.empty()) {
    std::fprintf(stderr, "fuzz_client_hello: expected a server service with routes only\n");
    std::abort();
  }
  return s;
}

// Connection::route_gate: a service without a default `connect` takes only routed names.
bool route_gate(void* arg, std::string_view server_name) {
  const auto& s = *static_cast<const ferry::ServiceRuntime*>(arg);
  return s.backends || s.router.find(server_name) != nullptr;
}

// FERRY_FUZZ_VERBOSE=1: one line per input saying how the handshake ended (for triage and for
// checking that the seeds reach the callbacks they are meant for).
bool verbose() {
  static const bool on = std::getenv("FERRY_FUZZ_VERBOSE") != nullptr;
  return on;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  service();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ferry::ServiceRuntime& svc = service();
  ferry::SniGate gate;  // outlives the SSL that points at it, like Connection::gate_
  gate.allow = route_gate;
  gate.arg = const_cast<ferry::ServiceRuntime*>(&svc);
  ERR_clear_error();
  ferry::SslPtr ssl(SSL_new(svc.tls->ctx.get()));
  FUZZ_CHECK(ssl != nullptr);
  BIO* in = BIO_new_mem_buf(data, static_cast<int>(size));
  BIO* out = BIO_new(BIO_s_mem());
  FUZZ_CHECK(in != nullptr && out != nullptr);
  BIO_set_mem_eof_return(in, -1);   // like a socket with nothing more yet: WANT_READ, not EOF
  SSL_set_bio(ssl.get(), in, out);  // ssl owns both
  SSL_set_accept_state(ssl.get());
  ferry::set_sni_gate(ssl.get(), &gate);

  const int r = SSL_do_handshake(ssl.get());
  const int saved_errno = errno;
  const int err = SSL_get_error(ssl.get(), r);
  if (r != 1 && err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
    // What Connection::do_handshake does with a failure.
    unsigned long first = 0;
    const std::string detail = ferry::drain_openssl_errors(&first);
    ferry::HandshakeFailure reason = ferry::classify_handshake_failure(
        err, first, saved_errno, ferry::client_hello_seen(ssl.get()));
    if (gate.refused) {
      reason = ferry::HandshakeFailure::unknown_sni;
    } else if (reason == ferry::HandshakeFailure::other) {
      if (auto auth = ferry::client_auth_failure(ssl.get())) reason = *auth;
    }
    FUZZ_CHECK(ferry::to_string(reason) != nullptr);
    if (verbose()) {
      std::fprintf(stderr, "fuzz_client_hello: %zu bytes: reason=%s verify=%ld (%s)\n", size,
                   ferry::to_string(reason), SSL_get_verify_result(ssl.get()), detail.c_str());
    }
  } else if (verbose()) {
    std::fprintf(stderr, "fuzz_client_hello: %zu bytes: wants more (%s)\n", size,
                 SSL_get_version(ssl.get()));
  }
  // Finishing needs the client's Finished, which depends on the server's random: no fixed byte
  // string can complete a handshake. If one does, something is badly wrong.
  FUZZ_CHECK(r != 1);
  // Whatever ferry would send back; drained like a socket write.
  char sink[4096];
  while (BIO_read(out, sink, sizeof sink) > 0) {
  }
  ERR_clear_error();
  return 0;
}
