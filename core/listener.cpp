#include "core/listener.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "core/worker.h"

namespace ferry {
namespace {

constexpr int kAcceptBatch = 64;      // accepts per readiness event, for fairness
constexpr uint64_t kBackoffMs = 100;  // pause after EMFILE/ENFILE

}  // namespace

int open_listen_socket(const SocketAddress& addr, std::string& why) {
  const int family = addr.storage.ss_family;
  const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    why = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      (family == AF_INET6 && ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)) {
    why = std::string("setsockopt: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (::bind(fd, addr.get(), addr.len) != 0) {
    why = "cannot listen on " + addr.str() + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    why = "cannot listen on " + addr.str() + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

bool address_in_use(const SocketAddress& addr, std::string& why) {
  const int family = addr.storage.ss_family;
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;  // the real bind reports the problem
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  const bool in_use = ::bind(fd, addr.get(), addr.len) != 0 && errno == EADDRINUSE;
  if (in_use) why = "cannot listen on " + addr.str() + ": " + std::strerror(EADDRINUSE);
  ::close(fd);
  return in_use;
}

Listener::Listener(Worker& worker, size_t service_index, int fd)
    : worker_(worker), service_index_(service_index), fd_(fd) {}

Listener::~Listener() {
  if (open_handles_ != 0) {
    LOG_ERROR("listener destroyed with %d open handles", open_handles_);
    std::abort();
  }
}

bool Listener::start() {
  if (uv_poll_init_socket(worker_.loop(), &poll_, fd_) != 0) return false;
  poll_.data = this;
  ++open_handles_;
  uv_timer_init(worker_.loop(), &backoff_);
  backoff_.data = this;
  ++open_handles_;
  return uv_poll_start(&poll_, UV_READABLE, on_poll) == 0;
}

void Listener::close() {
  if (closing_) return;
  closing_ = true;
  if (open_handles_ == 0) {
    ::close(fd_);
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), on_close);
  uv_close(reinterpret_cast<uv_handle_t*>(&backoff_), on_close);
}

void Listener::on_close(uv_handle_t* h) {
  auto* self = static_cast<Listener*>(h->data);
  if (--self->open_handles_ == 0) ::close(self->fd_);
}

void Listener::on_poll(uv_poll_t* h, int status, int /*events*/) {
  auto* self = static_cast<Listener*>(h->data);
  if (status < 0) {
    LOG_WARN("listener poll error: %s", uv_strerror(status));
    return;
  }
  self->accept_batch();
}

void Listener::on_backoff(uv_timer_t* t) {
  auto* self = static_cast<Listener*>(t->data);
  if (!self->closing_) uv_poll_start(&self->poll_, UV_READABLE, on_poll);
}

void Listener::accept_batch() {
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int fd =
        ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      fd_exhausted_logged_ = false;
      // TLS records are written whole: Nagle would only hold the last one of a reply back.
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      worker_.adopt(fd, peer, len, service_index_);
      continue;
    }
    const int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return;
    if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      // Out of descriptors or memory: stop accepting for a moment instead of spinning on a
      // readable socket; existing connections keep running. Logged once per episode.
      if (!fd_exhausted_logged_) {
        LOG_ERROR("accept: %s; pausing accepts for %llums", std::strerror(err),
                  static_cast<unsigned long long>(kBackoffMs));
        fd_exhausted_logged_ = true;
      }
      uv_poll_stop(&poll_);
      uv_timer_start(&backoff_, on_backoff, kBackoffMs, 0);
      return;
    }
    LOG_WARN("accept: %s", std::strerror(err));
    return;
  }
}

}  // namespace ferry
