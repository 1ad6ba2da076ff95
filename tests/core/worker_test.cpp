// Event-loop tests: a real Worker on 127.0.0.1:0 with a blocking test backend and a blocking
// OpenSSL client in the test thread. Each test ends with the worker stopped and its loop closed
// with no handle left (uv_loop_close() == 0).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <openssl/ssl.h>

#include <string>
#include <thread>

#include "core/listener.h"
#include "core/metrics.h"
#include "core/runtime.h"
#include "core/worker.h"
#include "tests/core/test_certs.h"

namespace {

using namespace ferry;

uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

int blocking_listener() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 16) == 0);
  return fd;
}

int connect_to(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  timeval tv{10, 0};  // never hang the suite
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// One ferry service in front of `backend_port`, on a worker of its own.
struct Fixture {
  test::TempDir dir;
  Metrics metrics;
  std::shared_ptr<const Runtime> runtime;
  std::unique_ptr<Worker> worker;
  uint16_t port = 0;

  explicit Fixture(uint16_t backend_port) {
    auto key = test::make_key(test::KeyKind::ec_p256);
    auto cert = test::make_cert(test::CertSpec{}, key.get());
    Config config;
    config.path = dir.file("ferry.toml");
    ServiceConfig svc;
    svc.name = "t";
    svc.accept = {"127.0.0.1", 0};
    svc.connect.backends.push_back(ferry::Endpoint{{"127.0.0.1", backend_port}, ""});
    svc.cert_file = dir.write("cert.pem", test::to_pem(cert.get()));
    svc.key_file = dir.write("key.pem", test::to_pem(key.get()));
    svc.connect_timeout = std::chrono::milliseconds(2000);
    config.services.push_back(svc);
    RuntimeResult built = build_runtime(config, &metrics);
    REQUIRE(built.errors.empty());
    runtime = built.runtime;
    std::string why;
    const int fd = open_listen_socket(runtime->services[0].accept, 128, why);
    REQUIRE_MESSAGE(fd >= 0, why);
    port = local_port(fd);
    worker = std::make_unique<Worker>(0, runtime, std::vector<int>{fd});
    worker->start();
  }

  bool stop() {
    worker->stop();
    worker->join();
    return worker->loop_closed_cleanly();
  }

  bool metric_has(const std::string& line) {
    return metrics.serialize().find(line + "\n") != std::string::npos;
  }
};

struct TlsClient {
  SslCtxPtr ctx{SSL_CTX_new(TLS_client_method())};
  SslPtr ssl;
  int fd;

  explicit TlsClient(uint16_t port) : fd(connect_to(port)) {
    ssl.reset(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), fd);
    SSL_set_tlsext_host_name(ssl.get(), "localhost");
  }
  ~TlsClient() {
    ssl.reset();
    ::close(fd);
  }
  bool handshake() { return SSL_connect(ssl.get()) == 1; }
  std::string read_all() {
    std::string out;
    char buf[4096];
    for (;;) {
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) return out;
      out.append(buf, static_cast<size_t>(n));
    }
  }
};

TEST_CASE("a worker relays both ways, forwards the client's half-close, and leaks no handle") {
  const int backend = blocking_listener();
  std::thread backend_thread([backend] {
    // Read until the client's half-close arrives, then answer and close.
    const int c = ::accept(backend, nullptr, nullptr);
    size_t total = 0;
    char buf[65536];
    for (ssize_t n; (n = ::read(c, buf, sizeof buf)) > 0;) total += static_cast<size_t>(n);
    const std::string reply = "got " + std::to_string(total) + " bytes";
    (void)!::write(c, reply.data(), reply.size());
    ::close(c);
  });

  Fixture f(local_port(backend));
  {
    TlsClient client(f.port);
    REQUIRE(client.handshake());
    const std::string chunk(100000, 'x');
    for (int i = 0; i < 10; ++i) {
      REQUIRE(SSL_write(client.ssl.get(), chunk.data(), static_cast<int>(chunk.size())) > 0);
    }
    ::shutdown(client.fd, SHUT_WR);  // half-close without close_notify, as many clients do
    CHECK(client.read_all() == "got 1000000 bytes");
  }
  backend_thread.join();
  ::close(backend);
  CHECK(f.metric_has("ferry_bytes_total{direction=\"to_backend\",service=\"t\"} 1000000"));
  CHECK(f.metric_has("ferry_bytes_total{direction=\"to_client\",service=\"t\"} 17"));
  CHECK(f.stop());
  CHECK(f.metric_has("ferry_connections_total{service=\"t\"} 1"));
  CHECK(f.metric_has("ferry_connections_active{service=\"t\"} 0"));
}

TEST_CASE("a refused backend ends the client's connection and is counted") {
  const int dead = blocking_listener();
  const uint16_t dead_port = local_port(dead);
  ::close(dead);  // nothing listens there any more

  Fixture f(dead_port);
  {
    TlsClient client(f.port);
    REQUIRE(client.handshake());
    CHECK(client.read_all().empty());
  }
  CHECK(f.stop());
  const std::string backend = "127.0.0.1:" + std::to_string(dead_port);
  CHECK(f.metric_has("ferry_backend_connect_failures_total{backend=\"" + backend +
                     "\",service=\"t\"} 1"));
  CHECK(f.metric_has(
      "ferry_connections_closed_total{reason=\"backend_connect_failed\",service=\"t\"} 1"));
}

TEST_CASE("stopping a worker closes open connections and every handle") {
  const int backend = blocking_listener();
  Fixture f(local_port(backend));
  TlsClient client(f.port);
  REQUIRE(client.handshake());
  const int held = ::accept(backend, nullptr, nullptr);  // the backend leg is up
  CHECK(f.stop());
  CHECK(client.read_all().empty());
  CHECK(f.metric_has("ferry_connections_closed_total{reason=\"shutdown\",service=\"t\"} 1"));
  ::close(held);
  ::close(backend);
}

}  // namespace
