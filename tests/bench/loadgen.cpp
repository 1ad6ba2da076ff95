// loadgen: the load generator of tests/bench/run. One thread, epoll, non-blocking OpenSSL
// clients (or plain TCP with --plain). It talks to tests/bench/backend.cpp through the proxy
// under test, with that backend's tiny HTTP/1.1 dialect:
//   GET /bytes/N      -> N bytes of body          PUT /upload/N + N bytes -> empty 200
//   GET /anything     -> a small fixed response (keep-alive)
//
//   loadgen handshake --port P [--resume] [--bare|--abort] [--conc 64] [--duration 10]
//                     [--warmup 0.5]
//       Keep --conc connections in flight for --duration seconds. Each one: connect, TLS
//       handshake (resuming the slot's newest session with --resume), one small request and
//       its response (not with --bare), close_notify, read until the proxy closes. --abort:
//       close right after the handshake instead, as `openssl s_time -new` does. Counts the
//       connections completed in the window (rate) and in all; with --resume also those that
//       resumed (resumed_rate): a proxy that declines a session or sends no new ticket makes
//       a full handshake instead, which is not an error.
//       LOADGEN_DEBUG=1 in the environment logs every handshake and ticket on stderr.
//   loadgen download|upload --port P [--bytes N] [--streams S]
//       S connections handshake, then all start at once; each moves N bytes of body.
//       Throughput = all body bytes / (last end - first start).
//   loadgen idle --port P --count N [--conc 200] [--hold 600]
//       Open N connections, each: handshake + one small request/response, then idle. Prints
//       "READY N" on stdout once all are established, then holds them until stdin reaches EOF
//       (or --hold seconds) and reports; a connection that ends while idle is an error.
//   loadgen latency --port P [--rate 1000] [--duration 10] [--conc 16]
//       Open-loop: request i is due at t0 + i/rate whatever happened before, sent on a free
//       keep-alive connection (queued if none is free); latency = response end - due time.
//
// Common: --host 127.0.0.1, --plain, --sni localhost, --ciphersuites TLS_AES_128_GCM_SHA256,
// --groups X25519, --ca FILE (verify the chain and name; default: no chain verification —
// TLS 1.3 still checks the CertificateVerify signature), --timeout 20 (per connection step).
// The result is one JSON object on stdout's last line. Exit status 0 even with errors (they
// are in the JSON: "errors" and "error_kinds"); 2 on usage errors.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

double now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Options {
  std::string mode;
  std::string host = "127.0.0.1";
  int port = 0;
  bool tls = true;
  bool resume = false;
  bool bare = false;
  bool abort = false;
  std::string sni = "localhost";
  std::string suites = "TLS_AES_128_GCM_SHA256";
  std::string groups = "X25519";
  std::string ca;
  int conc = -1;
  double duration = 10;
  double warmup = 0.5;
  uint64_t bytes = 1ull << 30;
  int streams = 1;
  int count = 1000;
  double hold = 600;
  double rate = 1000;
  double timeout = 20;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "loadgen: %s\nusage: loadgen handshake|download|upload|idle|latency --port P "
               "[options] (see the comment at the top of tests/bench/loadgen.cpp)\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2) usage("no mode");
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--host") o.host = val();
    else if (a == "--port") o.port = std::atoi(val().c_str());
    else if (a == "--plain") o.tls = false;
    else if (a == "--resume") o.resume = true;
    else if (a == "--bare") o.bare = true;
    else if (a == "--abort") o.abort = true;
    else if (a == "--sni") o.sni = val();
    else if (a == "--ciphersuites") o.suites = val();
    else if (a == "--groups") o.groups = val();
    else if (a == "--ca") o.ca = val();
    else if (a == "--conc") o.conc = std::atoi(val().c_str());
    else if (a == "--duration") o.duration = std::atof(val().c_str());
    else if (a == "--warmup") o.warmup = std::atof(val().c_str());
    else if (a == "--bytes") o.bytes = std::strtoull(val().c_str(), nullptr, 10);
    else if (a == "--streams") o.streams = std::atoi(val().c_str());
    else if (a == "--count") o.count = std::atoi(val().c_str());
    else if (a == "--hold") o.hold = std::atof(val().c_str());
    else if (a == "--rate") o.rate = std::atof(val().c_str());
    else if (a == "--timeout") o.timeout = std::atof(val().c_str());
    else usage(("unknown option " + a).c_str());
  }
  if (o.port <= 0) usage("--port is required");
  if (o.mode != "handshake" && o.mode != "download" && o.mode != "upload" && o.mode != "idle" &&
      o.mode != "latency")
    usage(("unknown mode " + o.mode).c_str());
  if (o.conc < 0) o.conc = o.mode == "handshake" ? 64 : o.mode == "idle" ? 200 : 16;
  if (o.conc < 1 || o.streams < 1 || o.count < 1 || o.rate <= 0 || o.duration <= 0)
    usage("bad numeric option");
  return o;
}

// ---------------------------------------------------------------------------------------------

enum class St { New, Connecting, Handshaking, Barrier, Writing, Reading, Closing, Idle, Free, Done };

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  St st = St::New;
  int slot = 0;
  uint32_t interest = 0;
  double deadline = 0;
  // request / response
  std::string out;        // request bytes still to send (from out_off)
  size_t out_off = 0;
  uint64_t body_out = 0;  // upload body bytes still to send after `out`
  std::string head;       // response header being collected
  bool head_done = false;
  uint64_t body_in = 0;   // response body bytes still expected
  uint64_t body_total = 0;
  double t_start = 0, t_end = 0;
  double due = 0;         // latency: when the request in flight was due
  bool resumed = false;   // handshake: this connection resumed a session
};

struct Stats {
  uint64_t ok = 0, ok_window = 0, resumed = 0, resumed_window = 0, errors = 0, unclean = 0;
  std::map<std::string, uint64_t> kinds;
  std::string negotiated;
  void error(const std::string& what) {
    ++errors;
    if (kinds.size() < 20 || kinds.count(what)) ++kinds[what];
  }
};

class Loadgen {
 public:
  explicit Loadgen(Options o) : o_(std::move(o)) {}
  int run();

 private:
  // plumbing
  bool start_conn(Conn& c);
  void close_conn(Conn& c);
  void fail(Conn& c, const std::string& why);
  void want(Conn& c, uint32_t ev);
  void step(Conn& c);
  bool do_handshake(Conn& c);
  // io: >0 bytes, 0 eof, -1 would block (interest set), -2 error (already failed)
  long io_read(Conn& c, char* buf, size_t n);
  long io_write(Conn& c, const char* buf, size_t n);
  bool flush_out(Conn& c);   // true when everything (request + upload body) is written
  int read_response(Conn& c);  // 1 complete, 0 need more, -1 failed/closed
  void on_ready(Conn& c);
  void on_done(Conn& c);
  void check_timeouts(double t);
  std::string ssl_error(Conn& c, int r);
  static int new_session_cb(SSL* ssl, SSL_SESSION* sess);
  void loop_until(const std::function<bool()>& done, double hard_deadline);
  void report_common(std::string& j);
  void emit(std::string j);

  // modes
  int mode_handshake();
  int mode_bulk();
  int mode_idle();
  int mode_latency();
  void dispatch_latency();
  void start_bulk();
  void begin_close(Conn& c);

  Options o_;
  SSL_CTX* ctx_ = nullptr;
  int ep_ = -1;
  sockaddr_in addr_{};
  std::vector<std::unique_ptr<Conn>> conns_;
  std::vector<SSL_SESSION*> sessions_;  // per slot (resume)
  Stats st_;
  bool stopping_ = false;
  double window_start_ = 0, window_end_ = 0;
  int established_ = 0, finished_ = 0, in_flight_ = 0, started_ = 0, ready_ = 0;
  std::vector<char> rbuf_ = std::vector<char>(256 * 1024);
  static std::vector<char> zeros_;
  // latency
  std::deque<double> pending_;
  std::vector<Conn*> free_;
  std::vector<double> samples_;
  uint64_t scheduled_ = 0, total_requests_ = 0;
  double t0_ = 0;
  int tfd_ = -1;
  bool stdin_eof_ = false;
  bool bulk_started_ = false;
  std::vector<Conn*> restart_;  // handshake mode: slots to reconnect
};

std::vector<char> Loadgen::zeros_(256 * 1024, 0);
Loadgen* g_self = nullptr;

std::string openssl_errors() {
  std::string s;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!s.empty()) s += "; ";
    s += buf;
  }
  return s;
}

std::string json_escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      r += '\\';
      r += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      r += ' ';
    } else {
      r += ch;
    }
  }
  return r;
}

int Loadgen::new_session_cb(SSL* ssl, SSL_SESSION* sess) {
  auto* c = static_cast<Conn*>(SSL_get_app_data(ssl));
  if (c == nullptr || g_self == nullptr || !g_self->o_.resume) return 0;
  if (std::getenv("LOADGEN_DEBUG"))
    std::fprintf(stderr, "slot %d: new session (ticket lifetime %ld, resumable %d)\n", c->slot,
                 SSL_SESSION_get_ticket_lifetime_hint(sess), SSL_SESSION_is_resumable(sess));
  // A copy: OpenSSL marks the session object it handed us not resumable when the next ticket
  // of the same connection replaces it, or when the connection ends badly.
  SSL_SESSION* copy = SSL_SESSION_dup(sess);
  if (copy == nullptr) return 0;
  auto& slot = g_self->sessions_[c->slot];
  if (slot != nullptr) SSL_SESSION_free(slot);
  slot = copy;
  return 0;
}

void Loadgen::want(Conn& c, uint32_t ev) {
  if (c.interest == ev) return;
  epoll_event e{};
  e.events = ev;
  e.data.ptr = &c;
  if (c.interest == 0 && ev != 0) {
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &e);
  } else if (ev == 0) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
  } else {
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
  }
  c.interest = ev;
}

bool Loadgen::start_conn(Conn& c) {
  c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    st_.error(std::string("socket: ") + strerror(errno));
    return false;
  }
  int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.st = St::Connecting;
  c.interest = 0;
  c.out.clear();
  c.out_off = 0;
  c.body_out = 0;
  c.head.clear();
  c.head_done = false;
  c.body_in = 0;
  c.deadline = now() + o_.timeout;
  ++in_flight_;
  ++started_;
  if (connect(c.fd, reinterpret_cast<sockaddr*>(&addr_), sizeof addr_) != 0 &&
      errno != EINPROGRESS) {
    fail(c, std::string("connect: ") + strerror(errno));
    return false;
  }
  want(c, EPOLLOUT);
  return true;
}

void Loadgen::close_conn(Conn& c) {
  if (c.ssl != nullptr) {
    SSL_free(c.ssl);
    c.ssl = nullptr;
  }
  if (c.fd >= 0) {
    if (c.interest != 0) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
  }
  c.interest = 0;
  if (c.st != St::Done && c.st != St::New) --in_flight_;
  c.st = St::Done;
}

void Loadgen::fail(Conn& c, const std::string& why) {
  st_.error(why);
  close_conn(c);
  on_done(c);
}

std::string Loadgen::ssl_error(Conn& c, int r) {
  int e = SSL_get_error(c.ssl, r);
  std::string s = openssl_errors();
  if (e == SSL_ERROR_SYSCALL) return std::string("syscall: ") + (errno ? strerror(errno) : "eof");
  if (e == SSL_ERROR_ZERO_RETURN) return "close_notify";
  return "ssl error " + std::to_string(e) + (s.empty() ? "" : ": " + s);
}

long Loadgen::io_read(Conn& c, char* buf, size_t n) {
  if (c.ssl == nullptr) {
    ssize_t r = recv(c.fd, buf, n, 0);
    if (r > 0) return r;
    if (r == 0) return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      want(c, EPOLLIN);
      return -1;
    }
    fail(c, std::string("recv: ") + strerror(errno));
    return -2;
  }
  size_t got = 0;
  ERR_clear_error();
  errno = 0;
  int r = SSL_read_ex(c.ssl, buf, n, &got);
  if (r == 1) return static_cast<long>(got);
  int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ) {
    want(c, EPOLLIN);
    return -1;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    want(c, EPOLLOUT);
    return -1;
  }
  if (e == SSL_ERROR_ZERO_RETURN) return 0;
  fail(c, "read: " + ssl_error(c, r));
  return -2;
}

long Loadgen::io_write(Conn& c, const char* buf, size_t n) {
  if (c.ssl == nullptr) {
    ssize_t r = send(c.fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      want(c, EPOLLOUT);
      return -1;
    }
    fail(c, std::string("send: ") + strerror(errno));
    return -2;
  }
  size_t put = 0;
  ERR_clear_error();
  errno = 0;
  int r = SSL_write_ex(c.ssl, buf, n, &put);
  if (r == 1) return static_cast<long>(put);
  int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_WRITE) {
    want(c, EPOLLOUT);
    return -1;
  }
  if (e == SSL_ERROR_WANT_READ) {
    want(c, EPOLLIN);
    return -1;
  }
  fail(c, "write: " + ssl_error(c, r));
  return -2;
}

bool Loadgen::flush_out(Conn& c) {
  while (c.out_off < c.out.size()) {
    long r = io_write(c, c.out.data() + c.out_off, c.out.size() - c.out_off);
    if (r < 0) return false;
    c.out_off += static_cast<size_t>(r);
  }
  while (c.body_out > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(c.body_out, zeros_.size()));
    long r = io_write(c, zeros_.data(), n);
    if (r < 0) return false;
    c.body_out -= static_cast<uint64_t>(r);
  }
  return true;
}

// Reads one response (header + Content-Length body). Body bytes are counted, not kept.
int Loadgen::read_response(Conn& c) {
  for (;;) {
    long r = io_read(c, rbuf_.data(), rbuf_.size());
    if (r == -1) return 0;
    if (r == -2) return -1;
    if (r == 0) {
      fail(c, c.head_done || !c.head.empty() ? "eof inside a response" : "eof before a response");
      return -1;
    }
    const char* p = rbuf_.data();
    size_t n = static_cast<size_t>(r);
    if (!c.head_done) {
      size_t before = c.head.size();
      c.head.append(p, n);
      size_t end = c.head.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (c.head.size() > 16384) {
          fail(c, "response header too long");
          return -1;
        }
        continue;
      }
      if (c.head.compare(0, 12, "HTTP/1.1 200") != 0) {
        fail(c, "bad response: " + c.head.substr(0, std::min<size_t>(c.head.find("\r\n"), 60)));
        return -1;
      }
      size_t cl = c.head.find("Content-Length: ");
      if (cl == std::string::npos || cl > end) {
        fail(c, "response without Content-Length");
        return -1;
      }
      c.body_total = std::strtoull(c.head.c_str() + cl + 16, nullptr, 10);
      c.body_in = c.body_total;
      size_t used = end + 4 - before;  // bytes of this read that belonged to the header
      c.head_done = true;
      p += used;
      n -= used;
    }
    if (n > c.body_in) {
      fail(c, "more bytes than the response announced");
      return -1;
    }
    c.body_in -= n;
    if (c.body_in == 0) {
      c.head.clear();
      c.head_done = false;
      return 1;
    }
  }
}

bool Loadgen::do_handshake(Conn& c) {
  ERR_clear_error();
  errno = 0;
  int r = SSL_do_handshake(c.ssl);
  if (r == 1) {
    if (st_.negotiated.empty()) {
      std::string s = SSL_get_version(c.ssl);
      s += " ";
      s += SSL_get_cipher_name(c.ssl);
      int g = SSL_get_negotiated_group(c.ssl);
      const char* gn = g != 0 ? SSL_group_to_name(c.ssl, g) : nullptr;
      s += " ";
      s += gn != nullptr ? gn : "?";
      if (X509* cert = SSL_get0_peer_certificate(c.ssl)) {
        EVP_PKEY* k = X509_get0_pubkey(cert);
        s += " ";
        s += EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA ? "RSA" : EVP_PKEY_get_base_id(k) == EVP_PKEY_EC ? "EC" : "other";
        s += "-" + std::to_string(EVP_PKEY_get_bits(k));
      }
      st_.negotiated = s;
    }
    c.resumed = SSL_session_reused(c.ssl) == 1;
    if (std::getenv("LOADGEN_DEBUG"))
      std::fprintf(stderr, "slot %d: handshake done, resumed %d\n", c.slot, c.resumed ? 1 : 0);
    return true;
  }
  int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ) {
    want(c, EPOLLIN);
  } else if (e == SSL_ERROR_WANT_WRITE) {
    want(c, EPOLLOUT);
  } else {
    fail(c, "handshake: " + ssl_error(c, r));
  }
  return false;
}

void Loadgen::step(Conn& c) {
  for (int guard = 0; guard < 64 && c.st != St::Done; ++guard) {
    switch (c.st) {
      case St::Connecting: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(c, std::string("connect: ") + strerror(err));
          return;
        }
        if (!o_.tls) {
          c.st = St::Handshaking;
          break;
        }
        c.ssl = SSL_new(ctx_);
        SSL_set_app_data(c.ssl, &c);
        SSL_set_fd(c.ssl, c.fd);
        SSL_set_connect_state(c.ssl);
        if (!o_.sni.empty()) SSL_set_tlsext_host_name(c.ssl, o_.sni.c_str());
        if (!o_.ca.empty()) SSL_set1_host(c.ssl, o_.sni.c_str());
        if (o_.resume && sessions_[c.slot] != nullptr) SSL_set_session(c.ssl, sessions_[c.slot]);
        c.st = St::Handshaking;
        break;
      }
      case St::Handshaking:
        if (c.ssl != nullptr && !do_handshake(c)) return;
        ++established_;
        on_ready(c);
        if (c.st == St::Barrier || c.st == St::Idle || c.st == St::Free ||
            c.st == St::Connecting)  // --abort: c is already the slot's next connection
          return;
        break;
      case St::Writing:
        if (!flush_out(c)) return;
        c.st = St::Reading;
        break;
      case St::Reading: {
        int r = read_response(c);
        if (r <= 0) return;
        if (o_.mode == "handshake") {
          begin_close(c);  // the connection's one request is answered: close it
          break;
        }
        c.t_end = now();
        on_done(c);
        return;
      }
      case St::Closing: {
        // close_notify sent; read until the proxy closes (consumes the session tickets too).
        long r = io_read(c, rbuf_.data(), rbuf_.size());
        if (r == -1 || r == -2) return;
        if (r > 0) break;
        c.t_end = now();
        close_conn(c);
        on_done(c);
        return;
      }
      case St::Idle: {
        // Idle connections should hear nothing; anything but "would block" ends them.
        long r = io_read(c, rbuf_.data(), rbuf_.size());
        if (r == -1 || r == -2) return;
        fail(c, r == 0 ? "closed by the proxy while idle" : "unexpected bytes while idle");
        return;
      }
      case St::New:
      case St::Barrier:
      case St::Free:
        want(c, 0);
        return;
      case St::Done:
        return;
    }
  }
  // Still work to do after many rounds (a large read burst): continue on the next event.
  if (c.st != St::Done && c.interest == 0) want(c, EPOLLIN);
}

// close_notify (or a plain FIN), then read until the proxy closes its side.
void Loadgen::begin_close(Conn& c) {
  c.st = St::Closing;
  if (c.ssl != nullptr) {
    ERR_clear_error();
    int r = SSL_shutdown(c.ssl);  // 0: our close_notify is out; <0 with WANT_WRITE: retried on read
    if (r < 0 && SSL_get_error(c.ssl, r) != SSL_ERROR_WANT_WRITE) {
      fail(c, "shutdown: " + ssl_error(c, r));
    }
  } else {
    shutdown(c.fd, SHUT_WR);
  }
}

// The connection is established (handshake done): what the mode does next.
void Loadgen::on_ready(Conn& c) {
  c.deadline = now() + o_.timeout;
  if (o_.mode == "handshake") {
    if (o_.abort) {  // like `openssl s_time -new`: close at once, no close_notify, no waiting
      c.t_end = now();
      close_conn(c);
      on_done(c);
    } else if (o_.bare) {
      begin_close(c);
    } else {
      c.out = "GET /small HTTP/1.1\r\nHost: bench\r\n\r\n";
      c.out_off = 0;
      c.st = St::Writing;
    }
  } else if (o_.mode == "download" || o_.mode == "upload") {
    c.st = St::Barrier;
    ++ready_;
    start_bulk();
  } else if (o_.mode == "idle") {
    c.out = "GET /small HTTP/1.1\r\nHost: bench\r\n\r\n";
    c.out_off = 0;
    c.st = St::Writing;
  } else if (o_.mode == "latency") {
    c.out = "GET /small HTTP/1.1\r\nHost: bench\r\n\r\n";  // warm-up request
    c.out_off = 0;
    c.due = -1;
    c.st = St::Writing;
  }
}

// Bulk: once every stream is established (or failed), all requests start at the same time.
void Loadgen::start_bulk() {
  if (bulk_started_ || ready_ + finished_ < o_.streams || ready_ == 0) return;
  bulk_started_ = true;
  double t = now();
  for (auto& p : conns_) {
    Conn& x = *p;
    if (x.st != St::Barrier) continue;
    x.t_start = t;
    x.deadline = t + o_.timeout + static_cast<double>(o_.bytes) / 50e6;  // >= 50 MB/s
    if (o_.mode == "download") {
      x.out = "GET /bytes/" + std::to_string(o_.bytes) + " HTTP/1.1\r\nHost: bench\r\n\r\n";
    } else {
      x.out = "PUT /upload/" + std::to_string(o_.bytes) +
              " HTTP/1.1\r\nHost: bench\r\nContent-Length: " + std::to_string(o_.bytes) +
              "\r\n\r\n";
      x.body_out = o_.bytes;
    }
    x.out_off = 0;
    x.st = St::Writing;
  }
  for (auto& p : conns_)
    if (p->st == St::Writing) step(*p);
}

// One unit of work ended for c (successfully if c.st is not Done, or c was closed cleanly by
// the handshake mode; failures come here after fail()).
void Loadgen::on_done(Conn& c) {
  if (o_.mode == "handshake") {
    bool ok = c.t_end > 0 && c.fd < 0 && c.st == St::Done;
    if (ok) {
      ++st_.ok;
      if (c.resumed) ++st_.resumed;
      if (c.t_end >= window_start_ && c.t_end <= window_end_) {
        ++st_.ok_window;
        // After the warm-up every slot has a session to offer: one the proxy declines (or a
        // proxy that sent no ticket) makes a full handshake, counted but not as resumed.
        if (c.resumed) ++st_.resumed_window;
      }
      c.t_end = 0;
    }
    c.resumed = false;
    if (!stopping_) restart_.push_back(&c);  // reconnected by the loop, not from in here
    return;
  }
  if (o_.mode == "download" || o_.mode == "upload") {
    if (c.st != St::Done) {
      ++st_.ok;
      close_conn(c);
    }
    ++finished_;
    start_bulk();  // a stream that failed before the start must not hold the others back
    return;
  }
  if (o_.mode == "idle") {
    if (c.st != St::Done) {
      ++st_.ok;
      c.st = St::Idle;
      want(c, EPOLLIN);
    }
    ++finished_;
    return;
  }
  if (o_.mode == "latency") {
    if (c.st == St::Done) {
      ++finished_;
      return;
    }
    if (c.due >= 0) {
      samples_.push_back(c.t_end - c.due);
      ++st_.ok;
    } else {
      ++ready_;
    }
    c.st = St::Free;
    want(c, EPOLLIN);  // a free connection reads nothing; EOF/error shows up as readable
    free_.push_back(&c);
    dispatch_latency();
  }
}

void Loadgen::check_timeouts(double t) {
  for (auto& p : conns_) {
    Conn& c = *p;
    if (c.st == St::New || c.st == St::Done || c.st == St::Idle || c.st == St::Free ||
        c.st == St::Barrier)
      continue;
    if (t > c.deadline) fail(c, "timeout");
  }
}

void Loadgen::loop_until(const std::function<bool()>& done, double hard_deadline) {
  std::vector<epoll_event> evs(1024);
  double last_check = now();
  while (!done()) {
    double t = now();
    if (t > hard_deadline) {
      st_.error("run exceeded its time limit");
      return;
    }
    int timeout_ms = 50;
    if (o_.mode == "handshake" && !stopping_) {
      timeout_ms = std::clamp(static_cast<int>((window_end_ - t) * 1000) + 1, 0, 50);
    }
    int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), timeout_ms);
    if (n < 0 && errno != EINTR) {
      st_.error(std::string("epoll_wait: ") + strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      void* ptr = evs[i].data.ptr;
      if (ptr == &tfd_) {
        uint64_t ticks;
        if (read(tfd_, &ticks, sizeof ticks) < 0) { /* spurious */ }
        dispatch_latency();
        continue;
      }
      if (ptr == &stdin_eof_) {
        char b[256];
        ssize_t r = read(0, b, sizeof b);
        if (r <= 0) {
          stdin_eof_ = true;
          epoll_ctl(ep_, EPOLL_CTL_DEL, 0, nullptr);
        }
        continue;
      }
      auto* c = static_cast<Conn*>(ptr);
      if (c->st == St::Free) {
        // Nothing is expected on a free keep-alive connection.
        long r = io_read(*c, rbuf_.data(), rbuf_.size());
        if (r >= 0) {
          free_.erase(std::remove(free_.begin(), free_.end(), c), free_.end());
          fail(*c, r == 0 ? "keep-alive connection closed" : "unexpected bytes");
        }
        continue;
      }
      step(*c);
    }
    t = now();
    if (o_.mode == "handshake" && !stopping_ && t >= window_end_) stopping_ = true;
    if (!restart_.empty()) {  // one pass: a connect that fails at once waits for the next round
      std::vector<Conn*> again;
      again.swap(restart_);
      for (Conn* c : again)
        if (!stopping_) start_conn(*c);
    }
    if (t - last_check > 0.2) {
      check_timeouts(t);
      last_check = t;
    }
  }
}

void Loadgen::report_common(std::string& j) {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  char b[256];
  std::snprintf(b, sizeof b, ",\"ok\":%llu,\"errors\":%llu,\"client_cpu_s\":%.3f",
                static_cast<unsigned long long>(st_.ok),
                static_cast<unsigned long long>(st_.errors), cpu);
  j += b;
  j += ",\"negotiated\":\"" + json_escape(st_.negotiated) + "\",\"error_kinds\":{";
  bool first = true;
  for (auto& [k, v] : st_.kinds) {
    if (!first) j += ",";
    first = false;
    j += "\"" + json_escape(k) + "\":" + std::to_string(v);
  }
  j += "}";
}

void Loadgen::emit(std::string j) {
  report_common(j);
  j += "}\n";
  std::fputs(j.c_str(), stdout);
  std::fflush(stdout);
}

// --- modes -----------------------------------------------------------------------------------

int Loadgen::mode_handshake() {
  sessions_.assign(o_.conc, nullptr);
  double t = now();
  window_start_ = t + o_.warmup;
  window_end_ = window_start_ + o_.duration;
  for (int i = 0; i < o_.conc; ++i) {
    conns_.push_back(std::make_unique<Conn>());
    conns_.back()->slot = i;
  }
  for (auto& c : conns_) start_conn(*c);
  loop_until([&] { return stopping_ && in_flight_ == 0; }, window_end_ + o_.timeout + 5);
  for (auto& c : conns_)
    if (c->st != St::Done) close_conn(*c);
  char b[512];
  std::snprintf(b, sizeof b,
                "{\"mode\":\"handshake\",\"resume\":%s,\"conc\":%d,\"window_s\":%.3f,"
                "\"ok_window\":%llu,\"rate\":%.1f,\"resumed\":%llu,\"resumed_rate\":%.1f,"
                "\"ok_total\":%llu",
                o_.resume ? "true" : "false", o_.conc, o_.duration,
                static_cast<unsigned long long>(st_.ok_window),
                static_cast<double>(st_.ok_window) / o_.duration,
                static_cast<unsigned long long>(st_.resumed_window),
                static_cast<double>(st_.resumed_window) / o_.duration,
                static_cast<unsigned long long>(st_.ok));
  for (auto* s : sessions_)
    if (s) SSL_SESSION_free(s);
  emit(b);
  return 0;
}

int Loadgen::mode_bulk() {
  for (int i = 0; i < o_.streams; ++i) {
    conns_.push_back(std::make_unique<Conn>());
    conns_.back()->slot = i;
  }
  for (auto& c : conns_) start_conn(*c);
  double limit = now() + o_.timeout * 2 + static_cast<double>(o_.bytes) * o_.streams / 50e6;
  loop_until([&] { return finished_ == o_.streams; }, limit);
  double first = 1e300, last = 0;
  uint64_t moved = 0;
  for (auto& c : conns_) {
    if (c->t_start > 0) first = std::min(first, c->t_start);
    if (c->t_end > 0) last = std::max(last, c->t_end);
    if (c->t_end > 0) moved += o_.bytes;
    if (c->st != St::Done) close_conn(*c);
  }
  double secs = last > first ? last - first : 0;
  char b[512];
  std::snprintf(b, sizeof b,
                "{\"mode\":\"%s\",\"streams\":%d,\"bytes\":%llu,\"seconds\":%.4f,\"MBps\":%.1f",
                o_.mode.c_str(), o_.streams, static_cast<unsigned long long>(moved), secs,
                secs > 0 ? static_cast<double>(moved) / secs / 1e6 : 0.0);
  emit(b);
  return 0;
}

int Loadgen::mode_idle() {
  conns_.reserve(o_.count);
  for (int i = 0; i < o_.count; ++i) {
    conns_.push_back(std::make_unique<Conn>());
    conns_.back()->slot = i;
  }
  double t_begin = now();
  double limit = t_begin + o_.timeout + o_.count / 100.0 + 60;  // >= 100 connections/s
  int next = 0;
  loop_until(
      [&] {
        for (; next < o_.count; ++next) {
          if (started_ - finished_ >= o_.conc) break;
          start_conn(*conns_[next]);
        }
        return finished_ == o_.count;
      },
      limit);
  double t_ready = now();
  int idle = 0;
  for (auto& c : conns_)
    if (c->st == St::Idle) ++idle;
  std::printf("READY %d\n", idle);
  std::fflush(stdout);
  // Hold until stdin ends (the harness has sampled memory) or --hold passes.
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.ptr = &stdin_eof_;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, 0, &e) != 0) stdin_eof_ = true;
  double hold_end = now() + o_.hold;
  loop_until([&] { return stdin_eof_ || now() >= hold_end; }, hold_end + 1);
  int still = 0;
  for (auto& c : conns_) {
    if (c->st == St::Idle) {
      ++still;
      if (c->ssl != nullptr) SSL_shutdown(c->ssl);  // close_notify, then close without waiting
    }
    if (c->st != St::Done) close_conn(*c);
  }
  char b[512];
  std::snprintf(b, sizeof b,
                "{\"mode\":\"idle\",\"count\":%d,\"established\":%d,\"still_open\":%d,"
                "\"open_seconds\":%.3f",
                o_.count, idle, still, t_ready - t_begin);
  emit(b);
  return 0;
}

void Loadgen::dispatch_latency() {
  if (t0_ <= 0) return;
  double t = now();
  uint64_t total = static_cast<uint64_t>(o_.rate * o_.duration);
  while (scheduled_ < total) {
    double due = t0_ + static_cast<double>(scheduled_) / o_.rate;
    if (due > t) break;
    pending_.push_back(due);
    ++scheduled_;
  }
  while (!pending_.empty() && !free_.empty()) {
    Conn* c = free_.back();
    free_.pop_back();
    c->due = pending_.front();
    pending_.pop_front();
    c->out = "GET /small HTTP/1.1\r\nHost: bench\r\n\r\n";
    c->out_off = 0;
    c->deadline = t + o_.timeout;
    c->st = St::Writing;
    ++total_requests_;
    step(*c);
  }
  if (scheduled_ < total) {
    double next = t0_ + static_cast<double>(scheduled_) / o_.rate;
    itimerspec its{};
    its.it_value.tv_sec = static_cast<time_t>(next);
    its.it_value.tv_nsec = static_cast<long>((next - std::floor(next)) * 1e9);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    timerfd_settime(tfd_, TFD_TIMER_ABSTIME, &its, nullptr);
  }
}

int Loadgen::mode_latency() {
  tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.ptr = &tfd_;
  epoll_ctl(ep_, EPOLL_CTL_ADD, tfd_, &e);
  for (int i = 0; i < o_.conc; ++i) {
    conns_.push_back(std::make_unique<Conn>());
    conns_.back()->slot = i;
  }
  for (auto& c : conns_) start_conn(*c);
  loop_until([&] { return ready_ + finished_ >= o_.conc; }, now() + o_.timeout + 5);
  uint64_t total = static_cast<uint64_t>(o_.rate * o_.duration);
  if (ready_ == o_.conc) {
    st_.ok = 0;
    t0_ = now() + 0.01;
    dispatch_latency();
    loop_until([&] { return scheduled_ == total && pending_.empty() &&
                            samples_.size() + (st_.errors) >= total; },
               t0_ + o_.duration + o_.timeout + 5);
  }
  for (auto& c : conns_)
    if (c->st != St::Done) close_conn(*c);
  std::sort(samples_.begin(), samples_.end());
  auto pct = [&](double q) {
    if (samples_.empty()) return 0.0;
    size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(samples_.size()))) - 1;
    return samples_[std::min(i, samples_.size() - 1)] * 1e6;
  };
  double mean = 0;
  for (double s : samples_) mean += s;
  if (!samples_.empty()) mean = mean / static_cast<double>(samples_.size()) * 1e6;
  if (samples_.size() < total) {
    uint64_t missing = total - samples_.size();
    if (st_.errors < missing) {
      st_.kinds["requests without a response"] += missing - st_.errors;
      st_.errors = missing;
    }
  }
  char b[512];
  std::snprintf(b, sizeof b,
                "{\"mode\":\"latency\",\"rate\":%.1f,\"conc\":%d,\"requests\":%llu,"
                "\"samples\":%zu,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
                "\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f",
                o_.rate, o_.conc, static_cast<unsigned long long>(total), samples_.size(),
                pct(0.5), pct(0.9), pct(0.99), pct(0.999),
                samples_.empty() ? 0.0 : samples_.back() * 1e6, mean);
  emit(b);
  return 0;
}

int Loadgen::run() {
  g_self = this;
  signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  addr_.sin_family = AF_INET;
  addr_.sin_port = htons(static_cast<uint16_t>(o_.port));
  if (inet_pton(AF_INET, o_.host.c_str(), &addr_.sin_addr) != 1) usage("--host must be IPv4");
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (o_.tls) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    bool ok = ctx_ != nullptr && SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION) == 1 &&
              SSL_CTX_set_max_proto_version(ctx_, TLS1_3_VERSION) == 1 &&
              SSL_CTX_set_ciphersuites(ctx_, o_.suites.c_str()) == 1 &&
              SSL_CTX_set1_groups_list(ctx_, o_.groups.c_str()) == 1;
    if (ok && !o_.ca.empty()) {
      ok = SSL_CTX_load_verify_locations(ctx_, o_.ca.c_str(), nullptr) == 1;
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    }
    if (!ok) {
      std::fprintf(stderr, "loadgen: TLS setup: %s\n", openssl_errors().c_str());
      return 2;
    }
    SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx_, new_session_cb);
  }
  int rc;
  if (o_.mode == "handshake") rc = mode_handshake();
  else if (o_.mode == "download" || o_.mode == "upload") rc = mode_bulk();
  else if (o_.mode == "idle") rc = mode_idle();
  else rc = mode_latency();
  if (ctx_) SSL_CTX_free(ctx_);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  Loadgen lg(std::move(o));
  return lg.run();
}
