#include "core/connection.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/worker.h"

namespace ferry {
namespace {

constexpr size_t kBufSize = BufferPool::kBufferSize;

uv_stream_t* stream(uv_tcp_t* t) {
  return reinterpret_cast<uv_stream_t*>(t);
}
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
std::string client_cert_subject(const SSL* ssl) {
  const X509* cert = SSL_get0_peer_certificate(ssl);
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
      fd_(fd),
      peer_{peer, peer_len} {}

Connection::~Connection() {
  BufferPool& pool = worker_.buffers();
  pool.put(up_buf_);
  pool.put(down_buf_);
  ssl_.reset();
  if (fd_ >= 0) ::close(fd_);
}

std::string Connection::client_address() const {
  return peer_.str();
}

void Connection::start() {
  start_ns_ = uv_hrtime();
  ServiceMetrics& m = *service_.metrics;
  m.connections->Increment();
  m.active->Increment();

  uv_loop_t* loop = worker_.loop();
  uv_timer_init(loop, &timer_);
  timer_.data = this;
  ++open_handles_;
  if (uv_poll_init_socket(loop, &client_poll_, fd_) != 0) {
    close(EndReason::client_error);
    return;
  }
  client_poll_.data = this;
  ++open_handles_;

  ssl_.reset(SSL_new(service_.tls->ctx.get()));
  if (!ssl_ || SSL_set_fd(ssl_.get(), fd_) != 1) {
    CLOG_WARN(id_, "cannot create TLS session: %s", drain_openssl_errors().c_str());
    close(EndReason::client_error);
    return;
  }
  SSL_set_accept_state(ssl_.get());
  uv_timer_start(&timer_, on_timer,
                 static_cast<uint64_t>(service_.config.handshake_timeout.count()), 0);
  // The client speaks first: wait for its ClientHello rather than trying a read now.
  set_poll(UV_READABLE);
}

void Connection::set_poll(int events) {
  if (events == poll_events_ || state_ == State::closing) return;
  poll_events_ = events;
  if (events == 0) {
    uv_poll_stop(&client_poll_);
  } else {
    uv_poll_start(&client_poll_, events, on_client_poll);
  }
}

// ---- libuv trampolines -------------------------------------------------------------------

void Connection::on_client_poll(uv_poll_t* h, int status, int /*events*/) {
  auto* self = static_cast<Connection*>(h->data);
  if (status < 0) {
    if (self->state_ == State::handshake) {
      self->handshake_failed(HandshakeFailure::peer_closed, uv_strerror(status));
    } else {
      CLOG_DEBUG(self->id_, "client socket error: %s", uv_strerror(status));
      self->close(EndReason::client_error);
    }
    return;
  }
  if (self->state_ == State::handshake) {
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

void Connection::on_backend_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* self = static_cast<Connection*>(h->data);
  if (!self->down_buf_) self->down_buf_ = self->worker_.buffers().get();
  *buf = uv_buf_init(self->down_buf_ + self->down_len_,
                     static_cast<unsigned>(kBufSize - self->down_len_));
}

void Connection::on_backend_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* /*buf*/) {
  static_cast<Connection*>(s->data)->backend_read(nread);
}

void Connection::on_backend_written(uv_write_t* req, int status) {
  auto* self = static_cast<Connection*>(req->data);
  if (status == UV_ECANCELED || self->state_ == State::closing) return;
  self->backend_written(status);
}

void Connection::on_backend_shutdown(uv_shutdown_t* req, int status) {
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
  if (r == 1) {
    handshake_done();
    return;
  }
  const int saved_errno = errno;  // before SSL_get_error, which may touch it
  const int err = SSL_get_error(ssl_.get(), r);
  if (err == SSL_ERROR_WANT_READ) {
    set_poll(UV_READABLE);
    return;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    set_poll(UV_WRITABLE);
    return;
  }
  unsigned long first = 0;
  std::string detail = drain_openssl_errors(&first);
  const HandshakeFailure reason =
      classify_handshake_failure(err, first, saved_errno, client_hello_seen(ssl_.get()));
  if (detail.empty()) {
    detail = (err == SSL_ERROR_SYSCALL && saved_errno != 0) ? std::strerror(saved_errno)
                                                            : "connection closed by client";
  }
  handshake_failed(reason, detail);
}

void Connection::handshake_failed(HandshakeFailure reason, const std::string& detail) {
  service_.metrics->failures_for(reason).Increment();
  CLOG_INFO(id_, "handshake failed: service=%s client=%s reason=%s (%s)",
            service_.config.name.c_str(), client_address().c_str(), to_string(reason),
            detail.c_str());
  close(EndReason::handshake_failed);
}

void Connection::handshake_done() {
  handshake_ns_ = uv_hrtime() - start_ns_;
  ServiceMetrics& m = *service_.metrics;
  m.handshake_duration->Observe(seconds_since(start_ns_));
  m.handshake_for(ssl_.get()).Increment();
  if (SSL_session_reused(ssl_.get())) m.sessions_resumed->Increment();
  CLOG_DEBUG(id_, "handshake done: %s %s", SSL_get_version(ssl_.get()),
             SSL_get_cipher_name(ssl_.get()));
  state_ = State::connecting;
  set_poll(0);  // nothing to read from the client until the backend is there
  connect_backend();
}

// ---- backend connect ---------------------------------------------------------------------

void Connection::connect_backend() {
  uv_tcp_init(worker_.loop(), &backend_);
  backend_.data = this;
  backend_open_ = true;
  ++open_handles_;
  connect_req_.data = this;
  const int rc = uv_tcp_connect(&connect_req_, &backend_, service_.backend.get(), on_connect);
  if (rc < 0) {
    backend_connect_failed(uv_strerror(rc));
    return;
  }
  uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(service_.config.connect_timeout.count()),
                 0);
}

void Connection::backend_connect_failed(const char* why) {
  service_.metrics->backend_connect_failures->Increment();
  CLOG_WARN(id_, "backend connect failed: service=%s backend=%s client=%s: %s",
            service_.config.name.c_str(), service_.backend.str().c_str(), client_address().c_str(),
            why);
  close(EndReason::backend_connect_failed);
}

void Connection::backend_connected(int status) {
  if (status < 0) {
    backend_connect_failed(uv_strerror(status));
    return;
  }
  state_ = State::splicing;
  uv_tcp_nodelay(&backend_, 1);
  last_activity_ms_ = uv_now(worker_.loop());
  uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(service_.config.idle_timeout.count()), 0);
  start_backend_reading();
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
    case State::connecting:
      backend_connect_failed("timed out");
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
  flush_to_client();
  if (state_ != State::splicing) return;
  read_from_client();
  if (state_ != State::splicing) return;
  update_poll();
  maybe_finish();
}

void Connection::read_from_client() {
  while (!client_eof_ && !up_writing_ && state_ == State::splicing) {
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
        client_eof_ = true;
      } else {
        client_io_error(err, "read");
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
      service_.metrics->bytes_to_backend->Increment(static_cast<double>(len));
      last_activity_ms_ = uv_now(worker_.loop());
      write_to_backend();
      if (state_ != State::splicing) return;
    }
    if (blocked) break;
  }
  maybe_shutdown_backend();
}

void Connection::write_to_backend() {
  uv_buf_t b = uv_buf_init(up_buf_ + up_off_, static_cast<unsigned>(up_len_));
  int n = uv_try_write(stream(&backend_), &b, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(n));
    close(EndReason::backend_error);
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
  const int rc = uv_write(&write_req_, stream(&backend_), &b, 1, on_backend_written);
  if (rc < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(rc));
    close(EndReason::backend_error);
    return;
  }
  up_writing_ = true;
}

void Connection::backend_written(int status) {
  up_writing_ = false;
  if (status < 0) {
    CLOG_DEBUG(id_, "backend write: %s", uv_strerror(status));
    close(EndReason::backend_error);
    return;
  }
  last_activity_ms_ = uv_now(worker_.loop());
  worker_.buffers().put(up_buf_);
  up_buf_ = nullptr;
  up_len_ = up_off_ = 0;
  pump();
}

void Connection::maybe_shutdown_backend() {
  if (!client_eof_ || backend_shut_ || up_writing_ || up_len_ != 0) return;
  backend_shut_ = true;
  shutdown_req_.data = this;
  if (uv_shutdown(&shutdown_req_, stream(&backend_), on_backend_shutdown) != 0) {
    up_done_ = true;  // the backend is already gone for writing: nothing left to forward
  }
}

void Connection::start_backend_reading() {
  if (backend_reading_ || backend_eof_ || state_ != State::splicing) return;
  if (uv_read_start(stream(&backend_), on_backend_alloc, on_backend_read) == 0) {
    backend_reading_ = true;
  }
}

void Connection::backend_read(ssize_t nread) {
  if (state_ != State::splicing) return;
  if (nread > 0) {
    down_off_ = 0;
    down_len_ = static_cast<size_t>(nread);
    bytes_down_ += down_len_;
    service_.metrics->bytes_to_client->Increment(static_cast<double>(nread));
    last_activity_ms_ = uv_now(worker_.loop());
    flush_to_client();
    if (state_ != State::splicing) return;
    if (down_off_ < down_len_) {
      // The client is slow: stop reading the backend until this buffer is out.
      uv_read_stop(stream(&backend_));
      backend_reading_ = false;
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
    backend_eof_ = true;
    uv_read_stop(stream(&backend_));
    backend_reading_ = false;
    flush_to_client();  // forwards the EOF once nothing is pending
    if (state_ != State::splicing) return;
    update_poll();
    maybe_finish();
    return;
  }
  CLOG_DEBUG(id_, "backend read: %s", uv_strerror(static_cast<int>(nread)));
  close(EndReason::backend_error);
}

void Connection::flush_to_client() {
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
    client_io_error(err, "write");
    return;
  }
  if (down_buf_) {
    worker_.buffers().put(down_buf_);
    down_buf_ = nullptr;
  }
  down_off_ = down_len_ = 0;
  if (backend_eof_) {
    if (!down_done_) send_close_notify();
  } else {
    start_backend_reading();
  }
}

void Connection::send_close_notify() {
  ERR_clear_error();
  const int r = SSL_shutdown(ssl_.get());
  if (r < 0) {
    const int err = SSL_get_error(ssl_.get(), r);
    ERR_clear_error();
    if (err == SSL_ERROR_WANT_WRITE) return;  // retried from flush_to_client when writable
  }
  ::shutdown(fd_, SHUT_WR);
  down_done_ = true;
}

void Connection::update_poll() {
  if (state_ != State::splicing) return;
  int ev = 0;
  if (!client_eof_ && !up_writing_ && up_len_ == 0) {
    ev |= up_want_write_ ? UV_WRITABLE : UV_READABLE;
  }
  if (down_off_ < down_len_) {
    ev |= down_want_read_ ? UV_READABLE : UV_WRITABLE;
  } else if (backend_eof_ && !down_done_) {
    ev |= UV_WRITABLE;  // close_notify still to be sent
  }
  set_poll(ev);
}

void Connection::maybe_finish() {
  if (up_done_ && down_done_ && state_ == State::splicing) close(EndReason::done);
}

void Connection::client_io_error(int ssl_error, const char* op) {
  const int saved_errno = errno;
  std::string detail = drain_openssl_errors();
  if (detail.empty()) {
    detail = (ssl_error == SSL_ERROR_SYSCALL && saved_errno) ? std::strerror(saved_errno)
                                                             : "connection closed";
  }
  CLOG_DEBUG(id_, "client %s failed: %s", op, detail.c_str());
  close(EndReason::client_error);
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
  const std::string client_host = peer_.host();
  const std::string sni = ssl ? printable_sni(ssl) : "";
  const std::string subject = negotiated ? client_cert_subject(ssl) : "";
  const std::string backend = service_.backend.str();

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
  r.to_backend = bytes_up_;
  r.to_client = bytes_down_;
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
  // client_poll_.data is set iff start() got past uv_poll_init_socket.
  if (client_poll_.data) uv_close(handle(&client_poll_), on_handle_closed);
  if (backend_open_) uv_close(handle(&backend_), on_handle_closed);
}

}  // namespace ferry
