// Connection, part 2: how a connection gets to its other end. Server mode: an optional PROXY
// header in front of the ClientHello, access lists, the SNI route gate, then the backend
// connect attempts (DNS, failover, health) and an optional PROXY header to the backend.
// Client mode: the upstream connect attempts. Part 1 (connection.cpp) is the handshake,
// splicing and the end.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "core/connection.h"
#include "core/listener.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/worker.h"

namespace ferry {
namespace {

// The TLV fields of a PROXY v2 header from a finished server-side handshake.
void fill_proxy_tls_fields(const SSL* ssl, proxy::Header& h) {
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  if (alpn && alpn_len) h.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) h.authority = sni;
  proxy::SslInfo info;
  const X509* peer = SSL_get0_peer_certificate(ssl);
  // On a resumed session the certificate came with the session, not on this connection.
  info.client_cert_conn = peer != nullptr && !SSL_session_reused(ssl);
  const SSL_SESSION* session = SSL_get_session(ssl);
  info.client_cert_sess = session && SSL_SESSION_get0_peer(const_cast<SSL_SESSION*>(session));
  // The spec: 0 only when a certificate was presented and verified.
  info.verify = peer ? static_cast<uint32_t>(SSL_get_verify_result(ssl)) : 1;
  info.version = SSL_get_version(ssl);
  if (const char* cipher = SSL_get_cipher_name(ssl)) info.cipher = cipher;
  if (peer) {
    char cn[256];
    const int len =
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
    if (len > 0) info.cn.assign(cn, static_cast<size_t>(len));
  }
  // The certificate ferry presented: its signature and key algorithms.
  if (const X509* own = SSL_get_certificate(ssl)) {
    if (const char* sig = OBJ_nid2sn(X509_get_signature_nid(own))) info.sig_alg = sig;
    if (const EVP_PKEY* key = X509_get0_pubkey(own)) {
      const int bits = EVP_PKEY_get_bits(key);
      switch (EVP_PKEY_get_base_id(key)) {
        case EVP_PKEY_RSA:
          info.key_alg = "RSA" + std::to_string(bits);
          break;
        case EVP_PKEY_EC:
          info.key_alg = "EC" + std::to_string(bits);
          break;
        default:
          if (const char* name = EVP_PKEY_get0_type_name(key)) info.key_alg = name;
      }
    }
  }
  ERR_clear_error();
  h.ssl = std::move(info);
}

}  // namespace

bool Connection::route_gate(void* arg, std::string_view server_name) {
  auto* self = static_cast<Connection*>(arg);
  if (self->service_.backends || self->service_.router.find(server_name) != nullptr) return true;
  self->refused_sni_ = server_name.substr(0, 253);
  return false;
}

bool Connection::access_allowed(const char* when) {
  if (service_.admits(peer_.get())) return true;
  service_.metrics->rejected_denied->Increment();
  CLOG_INFO(id_, "denied: service=%s client=%s (allow/deny, %s)", service_.config.name.c_str(),
            client_address().c_str(), when);
  close(EndReason::rejected);
  return false;
}

// accept_proxy: the header comes before the ClientHello. It is peeked, so that not one byte past
// it is taken from the socket OpenSSL reads next; a header that arrives in pieces is consumed
// piecewise (every byte of a valid incomplete prefix belongs to the header).
void Connection::read_proxy_header() {
  uint8_t buf[proxy::kMaxV2Length];
  const size_t have = proxy_in_.size();
  std::memcpy(buf, proxy_in_.data(), have);
  const ssize_t n = ::recv(tls_fd_, buf + have, sizeof buf - have, MSG_PEEK);
  auto reject = [this](const std::string& why) {
    service_.metrics->rejected_bad_proxy_header->Increment();
    CLOG_INFO(id_, "bad PROXY header: service=%s client=%s: %s", service_.config.name.c_str(),
              client_address().c_str(), why.c_str());
    close(EndReason::rejected);
  };
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    reject(std::string("read: ") + std::strerror(errno));
    return;
  }
  if (n == 0) {
    reject(have == 0 ? "connection closed before a header" : "connection closed inside the header");
    return;
  }
  const size_t total = have + static_cast<size_t>(n);
  const proxy::ParseResult r = proxy::parse(buf, total);
  if (r.status == proxy::ParseStatus::invalid) {
    reject(r.error);
    return;
  }
  if (r.status == proxy::ParseStatus::incomplete) {
    if (total >= sizeof buf) {
      reject("header too long");
      return;
    }
    if (::recv(tls_fd_, buf + have, static_cast<size_t>(n), 0) != n) {
      reject("read failed");
      return;
    }
    proxy_in_.append(reinterpret_cast<const char*>(buf + have), static_cast<size_t>(n));
    return;
  }
  const size_t rest = r.consumed - have;  // peeked, so available now
  if (rest > 0 && ::recv(tls_fd_, buf + have, rest, 0) != static_cast<ssize_t>(rest)) {
    reject("read failed");
    return;
  }
  std::string().swap(proxy_in_);
  const proxy::Header& h = r.header;
  if (!h.local && h.src.ss_family != AF_UNSPEC) {
    const socklen_t len = h.src.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    CLOG_DEBUG(id_, "PROXY header: client %s is %s", peer_.str().c_str(),
               SocketAddress::from(reinterpret_cast<const sockaddr*>(&h.src), len).str().c_str());
    peer_ = SocketAddress::from(reinterpret_cast<const sockaddr*>(&h.src), len);
    local_ = SocketAddress::from(reinterpret_cast<const sockaddr*>(&h.dst), len);
  }
  if (!access_allowed("the PROXY header's address")) return;
  begin_tls_accept(true);
}

// A failed connect attempt's handle is closed: try the next address or backend.
void Connection::on_attempt_closed(uv_handle_t* h) {
  auto* self = static_cast<Connection*>(h->data);
  if (--self->open_handles_ == 0 && self->state_ == State::closing) {
    self->worker_.connection_finished(self);
    return;
  }
  if (self->state_ == State::connecting) self->next_attempt("");
}

void Connection::on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
  auto* self = static_cast<Connection*>(req->data);
  self->dns_pending_ = false;
  self->dns_result_ = res;  // freed by free_dns() whatever happens next
  self->dns_next_ = res;
  if (self->state_ == State::closing) {
    if (--self->open_handles_ == 0) self->worker_.connection_finished(self);
    return;
  }
  --self->open_handles_;
  if (status < 0 || !res) {
    self->next_attempt(status == UV_ECANCELED
                           ? "name resolution timed out"
                           : std::string("cannot resolve: ") + uv_strerror(status));
    return;
  }
  self->next_attempt("");  // not a failure: go on with the first address
}

// ---- backend connect ---------------------------------------------------------------------

void Connection::try_next_backend() {
  const int i = group_->pick(tried_, cursor_, steady_ms());
  if (i < 0) {
    backend_exhausted();
    return;
  }
  backend_ = i;
  tried_ |= uint64_t{1} << i;
  const Backend& b = *group_->backends()[static_cast<size_t>(i)];
  uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(service_.config.connect_timeout.count()),
                 0);
  if (!b.needs_dns) {
    connect_to(b.address);
    return;
  }
  // A host name: resolved on libuv's thread pool, never blocking this loop.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  const std::string port = std::to_string(b.endpoint.tcp.port);
  dns_req_.data = this;
  const int rc = uv_getaddrinfo(worker_.loop(), &dns_req_, on_resolved, b.endpoint.tcp.host.c_str(),
                                port.c_str(), &hints);
  if (rc < 0) {
    next_attempt(std::string("cannot resolve: ") + uv_strerror(rc));
    return;
  }
  dns_pending_ = true;
  ++open_handles_;  // the request holds the connection until its callback
}

void Connection::connect_to(const SocketAddress& to) {
  upstream_ = to;
  if (client_mode()) {
    connect_upstream(to);
  } else {
    connect_backend(to);
  }
}

// Move on after a connect attempt: `why` non-empty means it failed (logged). The attempt's
// socket goes first: server mode closes the backend handle and on_attempt_closed calls back with
// why = ""; client mode closes the upstream socket at once. Then the current backend's next
// resolved address, if any; else the backend counts as failed and the next one is tried.
void Connection::next_attempt(const std::string& why) {
  if (state_ != State::connecting) return;
  const Backend& b = *group_->backends()[static_cast<size_t>(backend_)];
  if (!why.empty()) {
    const std::string where =
        b.needs_dns && upstream_.len ? b.label + " (" + upstream_.str() + ")" : b.label;
    CLOG_WARN(id_, "backend connect failed: service=%s backend=%s client=%s: %s",
              service_.config.name.c_str(), where.c_str(), client_address().c_str(), why.c_str());
  }
  if (!client_mode() && plain_open_) {
    plain_open_ = false;
    uv_close(&plain_.handle, on_attempt_closed);
    return;
  }
  if (client_mode() && tls_fd_ >= 0) {
    watching_ = false;
    ::close(tls_fd_);  // also leaves the poller
    tls_fd_ = -1;
  }
  if (dns_next_) {
    const addrinfo* ai = dns_next_;
    dns_next_ = ai->ai_next;
    connect_to(SocketAddress::from(ai->ai_addr, ai->ai_addrlen));
    return;
  }
  free_dns();
  group_->connect_failed(static_cast<size_t>(backend_), service_.config.name, steady_ms());
  upstream_ = SocketAddress{};
  try_next_backend();
}

void Connection::backend_exhausted() {
  CLOG_WARN(id_, "no backend reachable: service=%s client=%s (%d tried)",
            service_.config.name.c_str(), client_address().c_str(), std::popcount(tried_));
  close(EndReason::backend_connect_failed);
}

void Connection::free_dns() {
  if (dns_result_) uv_freeaddrinfo(dns_result_);
  dns_result_ = dns_next_ = nullptr;
}

void Connection::connect_backend(const SocketAddress& to) {
  init_plain(to.is_unix());
  connect_req_.data = this;
  if (to.is_unix()) {
    uv_pipe_connect(&connect_req_, &plain_.pipe, to.unix_path().c_str(), on_connect);
    return;
  }
  const int rc = uv_tcp_connect(&connect_req_, &plain_.tcp, to.get(), on_connect);
  if (rc < 0) next_attempt(uv_strerror(rc));
}

void Connection::connect_upstream(const SocketAddress& to) {
  // Client mode: a plain non-blocking connect; OpenSSL then drives the socket itself.
  tls_fd_ = ::socket(to.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (tls_fd_ < 0) {
    next_attempt(std::strerror(errno));
    return;
  }
  if (!to.is_unix()) set_tcp_options(tls_fd_, service_.config.tcp_keepalive);
  if (::connect(tls_fd_, to.get(), to.len) != 0 && errno != EINPROGRESS) {
    next_attempt(std::strerror(errno));
    return;
  }
  if (!watch_tls_socket()) {
    next_attempt("cannot watch the socket");
    return;
  }
  set_poll(UV_WRITABLE);  // writable = connected (or failed: SO_ERROR says which)
}

void Connection::upstream_connected() {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(tls_fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    next_attempt(std::strerror(err));
    return;
  }
  backend_up();
  if (!create_ssl()) {
    close(EndReason::backend_error);
    return;
  }
  state_ = State::handshake;
  uv_timer_start(&timer_, on_timer,
                 static_cast<uint64_t>(service_.config.handshake_timeout.count()), 0);
  do_handshake();  // we speak first: send the ClientHello now
}

// The current attempt connected: health, counts.
void Connection::backend_up() {
  free_dns();
  group_->connect_succeeded(static_cast<size_t>(backend_), service_.config.name);
  group_->backends()[static_cast<size_t>(backend_)]->active.fetch_add(1, std::memory_order_relaxed);
  backend_counted_ = true;
}

void Connection::backend_connected(int status) {
  if (status < 0) {
    next_attempt(uv_strerror(status));
    return;
  }
  backend_up();
  if (!upstream_.is_unix()) {
    uv_tcp_nodelay(&plain_.tcp, 1);
    const auto keepalive = service_.config.tcp_keepalive;
    if (keepalive.count() > 0) {
      uv_tcp_keepalive(&plain_.tcp, 1, static_cast<unsigned>(keepalive.count() / 1000));
    }
  }
  if (group_->proxy_protocol() != ProxyProtocol::none) {
    send_proxy_header();
    if (state_ != State::connecting) return;
  }
  start_splicing();
}

// PROXY protocol to the backend: who the client is, and (v2) what its TLS session negotiated.
// Written ahead of any payload through the same path as the client's bytes.
void Connection::send_proxy_header() {
  proxy::Header h;
  auto ip = [](const SocketAddress& a) { return a.family() == AF_INET || a.family() == AF_INET6; };
  SocketAddress local = local_;
  if (!local.len) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(tls_fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      local = SocketAddress::from(reinterpret_cast<const sockaddr*>(&ss), len);
    }
  }
  if (ip(peer_) && ip(local) && peer_.family() == local.family()) {
    h.src = peer_.storage;
    h.dst = local.storage;
  }
  std::string out;
  if (group_->proxy_protocol() == ProxyProtocol::v1) {
    out = proxy::encode_v1(h);
  } else {
    fill_proxy_tls_fields(ssl_.get(), h);
    out = proxy::encode_v2(h);
  }
  up_buf_ = worker_.buffers().get();
  const size_t n = std::min(out.size(), BufferPool::kBufferSize);
  std::memcpy(up_buf_, out.data(), n);
  up_off_ = 0;
  up_len_ = n;
  write_plain();
}

}  // namespace ferry
