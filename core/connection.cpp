#include "core/connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
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

#include "core/client_auth.h"
#include "core/listener.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/tls_client_context.h"
#include "core/tls_write_buffer.h"
#include "core/worker.h"

namespace ferry {
namespace {

constexpr size_t kBufSize = BufferPool::kBufferSize;
// TLS read buffer once established: four full records per read() (released when empty).
constexpr size_t kTlsReadBuffer = 4 * (SSL3_RT_MAX_PLAIN_LENGTH + SSL3_RT_MAX_ENCRYPTED_OVERHEAD);

uv_handle_t* handle(auto* h) {
  return reinterpret_cast<uv_handle_t*>(h);
}

// SNI is client-controlled: keep log lines parseable whatever it contains. "" when absent.
std::string printable_sni(const SSL* ssl) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name || !*name) return "";
  std::string out;
  for (const char* p = name; *p && out.size() < 253; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == '_' || c == '*';
    out.push_back(ok ? static_cast<char>(c) : '?');
  }
  return out;
}

// The client certificate's subject in RFC 2253 form (non-ASCII escaped), "" without one.
std::string client_cert_subject(const SSL* ssl, bool client_mode) {
  // Server mode: the certificate the client presented; client mode: the one ferry presented.
  const X509* cert = client_mode ? SSL_get_certificate(ssl) : SSL_get0_peer_certificate(ssl);
  if (!cert) return "";
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return "";
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  // Bounded: the line must stay one short write.
  return std::string(data, static_cast<size_t>(std::clamp(len, 0L, 1024L)));
}

double seconds_since(uint64_t start_ns) {
  return static_cast<double>(uv_hrtime() - start_ns) / 1e9;
}

}  // namespace

Connection::Connection(Worker& worker, std::shared_ptr<const Runtime> runtime,
                       const ServiceRuntime& service, int fd, const sockaddr_storage& peer,
                       socklen_t peer_len, uint64_t id)
    : worker_(worker),
      runtime_(std::move(runtime)),
      service_(service),
      id_(id),
      tls_fd_(service.config.mode == ServiceMode::client ? -1 : fd),
      accepted_fd_(service.config.mode == ServiceMode::client ? fd : -1),
      peer_(SocketAddress::from(reinterpret_cast<const sockaddr*>(&peer), peer_len)) {
  // A client on a Unix socket has no address of its own: name the socket it came through.
  if (peer_.is_unix() && peer_.unix_path().empty() && service.accept.is_unix()) {
    peer_ = service.accept;
  }
}

Connection::~Connection() {
  BufferPool& pool = worker_.buffers();
  pool.put(up_buf_);
  pool.put(down_buf_);
  free_dns();
  if (backend_counted_) {
    group_->backends()[static_cast<size_t>(backend_)]->active.fetch_sub(1,
                                                                        std::memory_order_relaxed);
  }
  if (holds_slot) service_.state->connections.fetch_sub(1, std::memory_order_relaxed);
  ssl_.reset();
  if (tls_fd_ >= 0) ::close(tls_fd_);
  if (accepted_fd_ >= 0) ::close(accepted_fd_);  // never handed to plain_
}

std::string Connection::client_address() const {
  return peer_.str();
}

void Connection::start() {
  start_ns_ = uv_hrtime();
  ServiceMetrics& m = *service_.metrics;
  m.connections->Increment();
  m.active->Increment();

  uv_timer_init(worker_.loop(), &timer_);
  timer_.data = this;
  ++open_handles_;
  if (client_mode()) {
    start_client_mode();
  } else {
    start_server_mode();
  }
}

bool Connection::watch_tls_socket() {
  watch_.on_ready = on_tls_ready;
  watch_.owner = this;
  if (worker_.poller().add(tls_fd_, &watch_) != 0) return false;
  watching_ = true;
  poll_events_ = 0;
  return true;
}

bool Connection::create_ssl() {
  SSL_CTX* ctx = client_mode() ? service_.client_tls->ctx.get() : service_.tls->ctx.get();
  ssl_.reset(SSL_new(ctx));
  bool ok = ssl_ != nullptr;
  if (ok) {
    // Reads straight from the socket; writes gathered so several records go in one send().
    BIO* rbio = BIO_new_socket(tls_fd_, BIO_NOCLOSE);
    tx_.emplace(worker_.tls_tx_buffers(), tls_fd_);
    tx_->hold_flushes(true);  // do_handshake sends each flight in one piece
    BIO* wbio = tx_->make_bio();
    ok = rbio && wbio;
    if (ok) {
      SSL_set_bio(ssl_.get(), rbio, wbio);  // the SSL owns both now
    } else {
      BIO_free(rbio);
      BIO_free(wbio);
    }
  }
  ok = ok &&
       (!client_mode() || prepare_client_ssl(ssl_.get(), service_.config, *service_.client_tls));
  if (!ok) CLOG_WARN(id_, "cannot create TLS session: %s", drain_openssl_errors().c_str());
  return ok;
}

void Connection::start_server_mode() {
  if (!watch_tls_socket()) {
    close(EndReason::client_error);
    return;
  }
  // One bound for the PROXY header and the handshake together.
  uv_timer_start(&timer_, on_timer,
                 static_cast<uint64_t>(service_.config.handshake_timeout.count()), 0);
  if (service_.config.accept_proxy) {
    state_ = State::proxy_header;
    set_poll(UV_READABLE);
    return;
  }
  begin_tls_accept(false);
}

void Connection::begin_tls_accept(bool bytes_waiting) {
  if (!create_ssl()) {
    close(EndReason::client_error);
    return;
  }
  SSL_set_accept_state(ssl_.get());
  if (!service_.router.empty()) {
    gate_.allow = route_gate;
    gate_.arg = this;
    set_sni_gate(ssl_.get(), &gate_);
  }
  state_ = State::handshake;
  if (bytes_waiting) {
    do_handshake();
    return;
  }
  // The client speaks first: wait for its ClientHello rather than trying a read now (a socket
  // added to the poller that is readable already reports it at once).
  set_poll(UV_READABLE);
}

void Connection::init_plain(bool unix_socket) {
  if (unix_socket) {
    uv_pipe_init(worker_.loop(), &plain_.pipe, 0);
  } else {
    uv_tcp_init(worker_.loop(), &plain_.tcp);
  }
  plain_.handle.data = this;
  plain_open_ = true;
  ++open_handles_;
}

void Connection::start_client_mode() {
  const bool unix_client = peer_.is_unix();
  init_plain(unix_client);
  const int rc = unix_client ? uv_pipe_open(&plain_.pipe, accepted_fd_)
                             : uv_tcp_open(&plain_.tcp, accepted_fd_);
  if (rc != 0) {
    close(EndReason::client_error);  // accepted_fd_ is still ours: closed by the destructor
    return;
  }
  accepted_fd_ = -1;  // plain_ owns it now
  if (!unix_client) uv_tcp_nodelay(&plain_.tcp, 1);
  state_ = State::connecting;
  group_ = service_.backends.get();
  cursor_ = group_->start_cursor();
  try_next_backend();
}

// Only records what the TLS side waits for: the socket stays in the poller, edge-triggered, and
// on_tls_ready drops the edges nobody waits for. Every caller waits only after a read or write
// got EAGAIN (a new edge will come) or goes on without waiting (pump, do_handshake).
void Connection::set_poll(int events) {
  if (state_ == State::closing || !watching_) return;
  poll_events_ = events;
}

// ---- libuv trampolines -------------------------------------------------------------------

void Connection::on_tls_ready(void* owner, uint32_t epoll_events) {
  auto* self = static_cast<Connection*>(owner);
  if (self->state_ == State::closing || !self->watching_) return;
  int ready = 0;
  if (epoll_events & (EPOLLIN | EPOLLRDHUP)) ready |= UV_READABLE;
  if (epoll_events & EPOLLOUT) ready |= UV_WRITABLE;
  // An error or hang-up: whichever call comes next (read, write, SO_ERROR) reports it.
  if (epoll_events & (EPOLLERR | EPOLLHUP)) ready |= UV_READABLE | UV_WRITABLE;
  if ((ready & self->poll_events_) == 0) return;
  if (self->state_ == State::connecting) {
    self->upstream_connected();  // client mode: the non-blocking connect finished
  } else if (self->state_ == State::proxy_header) {
    self->read_proxy_header();
  } else if (self->state_ == State::handshake) {
    self->do_handshake();
  } else {
    self->pump();
  }
}

void Connection::on_timer(uv_timer_t* t) {
  static_cast<Connection*>(t->data)->on_timeout();
}

void Connection::on_connect(uv_connect_t* req, int status) {
  auto* self = static_cast<Connection*>(req->data);
  if (status == UV_ECANCELED || self->state_ == State::closing) return;
  self->backend_connected(status);
}

void Connection::on_plain_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* self = static_cast<Connection*>(h->data);
  if (!self->down_buf_) self->down_buf_ = self->worker_.buffers().get();
  *buf = uv_buf_init(self->down_buf_ + self->down_len_,
                     static_cast<unsigned>(kBufSize - self->down_len_));
}

void Connection::on_plain_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* /*buf*/) {
  static_cast<Connection*>(s->data)->plain_read(nread);
}

void Connection::on_plain_written(uv_write_t* req, int status) {
  auto* self = static_cast<Connection*>(req->data);
  if (status == UV_ECANCELED || self->state_ == State::closing) return;
  self->plain_written(status);
}

void Connection::on_plain_shutdown(uv_shutdown_t* req, int status) {
  auto* self = static_cast<Connection*>(req->data);
  if (status == UV_ECANCELED || self->state_ == State::closing) return;
  self->up_done_ = true;
  self->maybe_finish();
}

void Connection::on_handle_closed(uv_handle_t* h) {
  auto* self = static_cast<Connection*>(h->data);
  if (--self->open_handles_ == 0) self->worker_.connection_finished(self);
}

// ---- handshake ---------------------------------------------------------------------------

void Connection::do_handshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_.get());
  const int saved_errno = errno;  // before SSL_get_error, which may touch it
  // What OpenSSL wrote (flushes are held during the handshake) goes now, in one send(): the
  // next flight, the session tickets, or the alert of a failed handshake.
  const TlsWriteBuffer::Flush sent =
      tx_->pending() != 0 ? tx_->flush() : TlsWriteBuffer::Flush::done;
  const int err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_.get(), r);
  const bool in_progress = err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE;
  if (sent == TlsWriteBuffer::Flush::error && (r == 1 || in_progress)) {
    ERR_clear_error();
    handshake_failed(HandshakeFailure::peer_closed, std::strerror(tx_->error()));
    return;
  }
  const int flush_wait = sent == TlsWriteBuffer::Flush::blocked ? UV_WRITABLE : 0;
  if (r == 1) {
    handshake_done();
    return;
  }
  if (err == SSL_ERROR_WANT_READ) {
    set_poll(UV_READABLE | flush_wait);
    return;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    set_poll(UV_WRITABLE);
    return;
  }
  unsigned long first = 0;
  std::string detail = drain_openssl_errors(&first);
  if (gate_.refused) {
    std::string sni = refused_sni_;
    for (char& c : sni) {
      if (static_cast<unsigned char>(c) < 0x20 || c == '"' || c == 0x7f) c = '?';
    }
    handshake_failed(HandshakeFailure::unknown_sni,
                     sni.empty() ? "no server name, and the service has no default connect"
                                 : "no route for \"" + sni + "\" and no default connect");
    return;
  }
  HandshakeFailure reason =
      classify_handshake_failure(err, first, saved_errno, client_hello_seen(ssl_.get()));
  if (client_mode()) {
    // Our verification of the upstream failed: say which check, with OpenSSL's words.
    const long verify = SSL_get_verify_result(ssl_.get());
    if (verify != X509_V_OK) {
      reason = classify_verify_result(verify);
      detail += std::string(detail.empty() ? "" : ": ") + X509_verify_cert_error_string(verify);
    } else if (reason == HandshakeFailure::not_tls) {
      reason = HandshakeFailure::other;  // we sent the ClientHello: "not TLS" is about clients
    }
  } else if (reason == HandshakeFailure::other) {
    // Verification failures classify as `other`; resets and timeouts keep their own reason.
    if (auto auth = client_auth_failure(ssl_.get())) {
      reason = *auth;  // the client's certificate was missing, untrusted, revoked or not allowed
      const long verify = SSL_get_verify_result(ssl_.get());
      if (verify != X509_V_OK) {
        detail += std::string(detail.empty() ? "" : ": ") + X509_verify_cert_error_string(verify);
      }
    }
  }
  if (detail.empty()) {
    detail = (err == SSL_ERROR_SYSCALL && saved_errno != 0) ? std::strerror(saved_errno)
                                                            : "connection closed by peer";
  }
  handshake_failed(reason, detail);
}

void Connection::handshake_failed(HandshakeFailure reason, const std::string& detail) {
  service_.metrics->failures_for(reason).Increment();
  if (client_mode()) {
    CLOG_INFO(id_, "handshake failed: service=%s upstream=%s client=%s reason=%s (%s)",
              service_.config.name.c_str(), upstream_.str().c_str(), client_address().c_str(),
              to_string(reason), detail.c_str());
  } else {
    CLOG_INFO(id_, "handshake failed: service=%s client=%s reason=%s (%s)",
              service_.config.name.c_str(), client_address().c_str(), to_string(reason),
              detail.c_str());
  }
  close(EndReason::handshake_failed);
}

void Connection::handshake_done() {
  handshake_ns_ = uv_hrtime() - start_ns_;
  tx_->hold_flushes(false);  // from now on OpenSSL's flushes (alerts) send at once
  // With read-ahead, one read() now takes up to four records. Only after the handshake: a
  // client stalling in its handshake keeps OpenSSL's default (one record) buffer.
  SSL_set_default_read_buffer_len(ssl_.get(), kTlsReadBuffer);
  ServiceMetrics& m = *service_.metrics;
  m.handshake_duration->Observe(seconds_since(start_ns_));
  m.handshake_for(ssl_.get()).Increment();
  if (SSL_session_reused(ssl_.get())) m.sessions_resumed->Increment();
  CLOG_DEBUG(id_, "handshake done: %s %s", SSL_get_version(ssl_.get()),
             SSL_get_cipher_name(ssl_.get()));
  if (client_mode()) {
    start_splicing();  // the plaintext client is already there
    return;
  }
  state_ = State::connecting;
  set_poll(0);  // nothing to read from the client until the backend is there
  group_ = service_.backends.get();
  if (!service_.router.empty()) {
    const char* name = SSL_get_servername(ssl_.get(), TLSEXT_NAMETYPE_host_name);
    if (const BackendGroup* routed = service_.router.find(name ? name : "")) group_ = routed;
  }
  if (!group_) {  // the SNI gate refuses these during the handshake
    close(EndReason::backend_connect_failed);
    return;
  }
  cursor_ = group_->start_cursor();
  try_next_backend();
}

void Connection::start_splicing() {
  state_ = State::splicing;
  last_activity_ms_ = uv_now(worker_.loop());
  uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(service_.config.idle_timeout.count()), 0);
  start_plain_reading();
  // OpenSSL may already hold application data that arrived with the handshake's last flight.
  pump();
}

void Connection::on_timeout() {
  switch (state_) {
    case State::handshake:
      handshake_failed(HandshakeFailure::timeout,
                       "no handshake within " +
                           std::to_string(service_.config.handshake_timeout.count()) + "ms");
      return;
    case State::proxy_header:
      service_.metrics->rejected_bad_proxy_header->Increment();
      CLOG_INFO(id_, "bad PROXY header: service=%s client=%s: none within %lldms",
                service_.config.name.c_str(), client_address().c_str(),
                static_cast<long long>(service_.config.handshake_timeout.count()));
      close(EndReason::rejected);
      return;
    case State::connecting:
      if (dns_pending_) {
        // The resolver's callback continues (with UV_ECANCELED if the cancel took).
        uv_cancel(reinterpret_cast<uv_req_t*>(&dns_req_));
        return;
      }
      next_attempt("timed out");
      return;
    case State::splicing: {
      // The idle timer is not re-armed on every byte: it checks the last activity when it fires.
      const uint64_t idle = static_cast<uint64_t>(service_.config.idle_timeout.count());
      const uint64_t quiet = uv_now(worker_.loop()) - last_activity_ms_;
      if (quiet >= idle) {
        CLOG_DEBUG(id_, "idle for %llums", static_cast<unsigned long long>(quiet));
        close(EndReason::idle_timeout);
      } else {
        uv_timer_start(&timer_, on_timer, idle - quiet, 0);
      }
      return;
    }
    case State::closing:
      return;
  }
}

// ---- splicing ----------------------------------------------------------------------------

void Connection::pump() {
  if (state_ != State::splicing) return;
  flush_tls();
  if (state_ != State::splicing) return;
  read_tls();
  if (state_ != State::splicing || !flush_tx()) return;
  update_poll();
  maybe_finish();
}

// Send the records gathered in tx_. False if the connection ended on a socket error.
bool Connection::flush_tx() {
  if (!tx_ || tx_->pending() == 0) return true;
  if (tx_->flush() != TlsWriteBuffer::Flush::error) return true;
  CLOG_DEBUG(id_, "TLS write failed: %s", std::strerror(tx_->error()));
  close(tls_side_error());
  return false;
}

void Connection::read_tls() {
  while (!tls_eof_ && !up_writing_ && state_ == State::splicing) {
    if (!up_buf_) up_buf_ = worker_.buffers().get();
    up_want_write_ = false;
    size_t len = 0;
    bool blocked = false;
    // Drain what OpenSSL and the socket have, several records per wakeup, up to one buffer.
    while (len < kBufSize) {
      ERR_clear_error();
      size_t n = 0;
      const int r = SSL_read_ex(ssl_.get(), up_buf_ + len, kBufSize - len, &n);
      if (r == 1) {
        len += n;
        continue;
      }
      const int err = SSL_get_error(ssl_.get(), r);
      if (err == SSL_ERROR_WANT_READ) {
        blocked = true;
      } else if (err == SSL_ERROR_WANT_WRITE) {
        up_want_write_ = true;
        blocked = true;
      } else if (err == SSL_ERROR_ZERO_RETURN) {
        // close_notify, or a bare TCP FIN (SSL_OP_IGNORE_UNEXPECTED_EOF): the client's
        // half-close, forwarded to the backend once everything before it is written.
        tls_eof_ = true;
      } else {
        tls_io_error(err, "read");
        return;
      }
      break;
    }
    if (len == 0) {
      worker_.buffers().put(up_buf_);
      up_buf_ = nullptr;
    } else {
      up_off_ = 0;
      up_len_ = len;
      bytes_up_ += len;
      (client_mode() ? service_.metrics->bytes_to_client : service_.metrics->bytes_to_backend)
          ->Increment(static_cast<double>(len));
      last_activity_ms_ = uv_now(worker_.loop());
      write_plain();
      if (state_ != State::splicing) return;
    }
    if (blocked) break;
  }
  maybe_shutdown_plain();
}

void Connection::write_plain() {
  uv_buf_t b = uv_buf_init(up_buf_ + up_off_, static_cast<unsigned>(up_len_));
  int n = uv_try_write(plain(), &b, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(n));
    close(plain_side_error());
    return;
  }
  up_off_ += static_cast<size_t>(n);
  up_len_ -= static_cast<size_t>(n);
  if (up_len_ == 0) {
    worker_.buffers().put(up_buf_);
    up_buf_ = nullptr;
    up_off_ = 0;
    return;
  }
  // The backend is slow: hand the rest to libuv and stop reading the client until it is out.
  b = uv_buf_init(up_buf_ + up_off_, static_cast<unsigned>(up_len_));
  write_req_.data = this;
  const int rc = uv_write(&write_req_, plain(), &b, 1, on_plain_written);
  if (rc < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(rc));
    close(plain_side_error());
    return;
  }
  up_writing_ = true;
}

void Connection::plain_written(int status) {
  up_writing_ = false;
  if (status < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(status));
    close(plain_side_error());
    return;
  }
  last_activity_ms_ = uv_now(worker_.loop());
  worker_.buffers().put(up_buf_);
  up_buf_ = nullptr;
  up_len_ = up_off_ = 0;
  pump();
}

void Connection::maybe_shutdown_plain() {
  if (!tls_eof_ || plain_shut_ || up_writing_ || up_len_ != 0) return;
  plain_shut_ = true;
  if (down_done_) {
    // The other direction is finished too: the connection closes now, and closing the socket
    // sends the FIN (everything was written and the other side's EOF read).
    up_done_ = true;
    return;
  }
  shutdown_req_.data = this;
  if (uv_shutdown(&shutdown_req_, plain(), on_plain_shutdown) != 0) {
    up_done_ = true;  // the backend is already gone for writing: nothing left to forward
  }
}

void Connection::start_plain_reading() {
  if (plain_reading_ || plain_eof_ || state_ != State::splicing) return;
  if (uv_read_start(plain(), on_plain_alloc, on_plain_read) == 0) {
    plain_reading_ = true;
  }
}

void Connection::plain_read(ssize_t nread) {
  if (state_ != State::splicing) return;
  if (nread > 0) {
    down_off_ = 0;
    down_len_ = static_cast<size_t>(nread);
    bytes_down_ += down_len_;
    (client_mode() ? service_.metrics->bytes_to_backend : service_.metrics->bytes_to_client)
        ->Increment(static_cast<double>(nread));
    last_activity_ms_ = uv_now(worker_.loop());
    flush_tls();
    if (state_ != State::splicing) return;
    if (down_off_ < down_len_) {
      // The client is slow: stop reading the backend until this buffer is out.
      uv_read_stop(plain());
      plain_reading_ = false;
    }
    update_poll();
    return;
  }
  if (nread == 0) {  // EAGAIN: nothing this time
    if (down_len_ == 0) {
      worker_.buffers().put(down_buf_);
      down_buf_ = nullptr;
    }
    return;
  }
  if (nread == UV_EOF) {
    // libuv reports a hang-up after a partial read as EOF, also when the peer reset the
    // connection: a reset must not reach the other side as a clean end.
    int fd = -1;
    int err = 0;
    socklen_t len = sizeof err;
    if (uv_fileno(&plain_.handle, &fd) == 0 &&
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
      CLOG_DEBUG(id_, "%s read: %s", client_mode() ? "client" : "backend", std::strerror(err));
      close(plain_side_error());
      return;
    }
    plain_eof_ = true;
    uv_read_stop(plain());
    plain_reading_ = false;
    flush_tls();  // forwards the EOF once nothing is pending
    if (state_ != State::splicing) return;
    update_poll();
    maybe_finish();
    return;
  }
  CLOG_DEBUG(id_, "backend read: %s", uv_strerror(static_cast<int>(nread)));
  close(plain_side_error());
}

void Connection::flush_tls() {
  down_want_read_ = false;
  if (down_off_ < down_len_)
    last_activity_ms_ = uv_now(worker_.loop());  // a slow reader is not idle
  while (down_off_ < down_len_) {
    ERR_clear_error();
    size_t n = 0;
    const int r = SSL_write_ex(ssl_.get(), down_buf_ + down_off_, down_len_ - down_off_, &n);
    if (r == 1) {
      down_off_ += n;
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), r);
    if (err == SSL_ERROR_WANT_WRITE) return;  // retried with the same bytes when writable
    if (err == SSL_ERROR_WANT_READ) {
      down_want_read_ = true;
      return;
    }
    tls_io_error(err, "write");
    return;
  }
  if (!flush_tx()) return;
  if (down_buf_) {
    worker_.buffers().put(down_buf_);
    down_buf_ = nullptr;
  }
  down_off_ = down_len_ = 0;
  if (plain_eof_) {
    if (!down_done_) send_close_notify();
  } else {
    start_plain_reading();
  }
}

void Connection::send_close_notify() {
  ERR_clear_error();
  const int r = SSL_shutdown(ssl_.get());
  if (r < 0) {
    const int err = SSL_get_error(ssl_.get(), r);
    ERR_clear_error();
    if (err == SSL_ERROR_WANT_WRITE) return;  // retried from flush_tls when writable
  }
  // The FIN goes after the alert: only once everything buffered is sent. A peer that is gone
  // already (EPIPE, e.g. a Unix-socket client that closed) just does not get the alert.
  if (tx_ && tx_->pending() != 0) {
    const TlsWriteBuffer::Flush sent = tx_->flush();
    if (sent == TlsWriteBuffer::Flush::blocked) return;  // retried from flush_tls when writable
    if (sent == TlsWriteBuffer::Flush::error) tx_->discard();
  }
  // With the other direction finished the connection closes right away, and close() sends the
  // FIN: a shutdown() first would only cost a system call.
  if (!up_done_) ::shutdown(tls_fd_, SHUT_WR);
  down_done_ = true;
}

void Connection::update_poll() {
  if (state_ != State::splicing) return;
  int ev = 0;
  if (!tls_eof_ && !up_writing_ && up_len_ == 0) {
    ev |= up_want_write_ ? UV_WRITABLE : UV_READABLE;
  }
  if (down_off_ < down_len_) {
    ev |= down_want_read_ ? UV_READABLE : UV_WRITABLE;
  } else if (plain_eof_ && !down_done_) {
    ev |= UV_WRITABLE;  // close_notify still to be sent
  }
  if (tx_ && tx_->pending() != 0) ev |= UV_WRITABLE;  // records gathered but not yet sent
  set_poll(ev);
}

void Connection::maybe_finish() {
  if (up_done_ && down_done_ && state_ == State::splicing) close(EndReason::done);
}

void Connection::tls_io_error(int ssl_error, const char* op) {
  const int saved_errno = errno;
  std::string detail = drain_openssl_errors();
  if (detail.empty()) {
    detail = (ssl_error == SSL_ERROR_SYSCALL && saved_errno) ? std::strerror(saved_errno)
                                                             : "connection closed";
  }
  CLOG_DEBUG(id_, "TLS %s failed: %s", op, detail.c_str());
  close(tls_side_error());
}

// ---- the end ------------------------------------------------------------------------------

void Connection::log_access() const {
  if (!log::access_enabled()) return;
  const SSL* ssl = ssl_.get();
  const bool negotiated = ssl && SSL_is_init_finished(ssl);  // version and cipher are known
  const SSL_CIPHER* cipher = negotiated ? SSL_get_current_cipher(ssl) : nullptr;
  const char* cipher_name = cipher ? SSL_CIPHER_standard_name(cipher) : nullptr;
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  if (negotiated) SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  const std::string client_host = peer_.is_unix() ? peer_.str() : peer_.host();
  const std::string sni = ssl ? printable_sni(ssl) : "";
  const std::string subject = negotiated ? client_cert_subject(ssl, client_mode()) : "";
  std::string backend;
  if (group_ && backend_ >= 0) {
    const Backend& b = *group_->backends()[static_cast<size_t>(backend_)];
    backend = b.needs_dns && upstream_.len ? b.label + "(" + upstream_.str() + ")" : b.label;
  }

  log::AccessRecord r;
  r.conn = id_;
  r.service = service_.config.name;
  r.client_addr = client_host;
  r.client_port = peer_.port();
  r.sni = sni;
  if (alpn && alpn_len) r.alpn = std::string_view(reinterpret_cast<const char*>(alpn), alpn_len);
  r.version = negotiated ? SSL_get_version(ssl) : "";
  r.cipher = cipher_name ? cipher_name : "";
  r.resumed = negotiated && SSL_session_reused(ssl);
  r.client_cert = subject;
  r.backend = backend;
  r.to_backend = client_mode() ? bytes_down_ : bytes_up_;
  r.to_client = client_mode() ? bytes_up_ : bytes_down_;
  r.handshake_s = negotiated ? static_cast<double>(handshake_ns_) / 1e9 : -1;
  r.duration_s = seconds_since(start_ns_);
  r.end = to_string(end_reason_);
  log::access(r);
}

void Connection::close(EndReason reason) {
  if (state_ == State::closing) return;
  state_ = State::closing;
  end_reason_ = reason;

  ServiceMetrics& m = *service_.metrics;
  m.closed_for(reason).Increment();
  m.active->Decrement();
  m.connection_duration->Observe(seconds_since(start_ns_));
  log_access();  // every connection, failed handshakes included (end=handshake_failed)

  uv_close(handle(&timer_), on_handle_closed);
  // (tls_fd_ stays in the poller until the destructor closes it; its edges are ignored now.)
  // The resolver's callback still comes (UV_ECANCELED if the cancel took) and releases the
  // connection.
  if (dns_pending_) uv_cancel(reinterpret_cast<uv_req_t*>(&dns_req_));
  // An error on one side is passed on as a reset of the other, never as a clean end of stream
  // (a truncated upload or download must not look complete).
  const bool error_end = reason == EndReason::client_error || reason == EndReason::backend_error;
  if (error_end && reason == plain_side_error() && tls_fd_ >= 0) {
    const linger reset{1, 0};
    ::setsockopt(tls_fd_, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);  // RST at close()
  }
  if (plain_open_) {
    const bool reset_plain = error_end && reason == tls_side_error() && !upstream_.is_unix() &&
                             plain_.handle.type == UV_TCP &&
                             uv_tcp_close_reset(&plain_.tcp, on_handle_closed) == 0;
    if (!reset_plain) uv_close(&plain_.handle, on_handle_closed);
  }
}

}  // namespace ferry
