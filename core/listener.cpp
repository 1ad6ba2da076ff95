#include "core/listener.h"

#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "core/metrics.h"
#include "core/worker.h"

namespace ferry {
namespace {

constexpr int kAcceptBatch = 64;       // accepts per readiness event, for fairness
constexpr uint64_t kBackoffMs = 100;   // pause after EMFILE/ENFILE
constexpr uint64_t kLimitPollMs = 20;  // at max_connections: look for room (other workers' ends)

}  // namespace

void set_tcp_options(int fd, std::chrono::milliseconds keepalive, bool clear_keepalive) {
  const int one = 1;
  // TLS records are written whole: Nagle would only hold the last one of a reply back.
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (keepalive.count() <= 0) {
    const int zero = 0;
    if (clear_keepalive) ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &zero, sizeof zero);
    return;
  }
  const int idle = static_cast<int>(std::max<int64_t>(1, keepalive.count() / 1000));
  const int interval = std::max(1, idle / 4);
  const int count = 4;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

int open_unix_listen_socket(const SocketAddress& addr, int backlog, int mode,
                            const std::string& owner, const std::string& group, std::string& why) {
  const std::string path = addr.unix_path();
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      why = "cannot listen on unix:" + path + ": a file that is not a socket is in the way";
      return -1;
    }
    // A socket file: in use if something accepts on it, stale (left by a crash) if not.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = probe >= 0 && ::connect(probe, addr.get(), addr.len) == 0;
    if (probe >= 0) ::close(probe);
    if (live) {
      why = "cannot listen on unix:" + path + ": " + std::strerror(EADDRINUSE);
      return -1;
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      why = "cannot remove the stale socket unix:" + path + ": " + std::strerror(errno);
      return -1;
    }
    LOG_INFO("removed stale socket file %s", path.c_str());
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    why = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  auto fail = [&](const std::string& what) {
    why = "cannot listen on unix:" + path + ": " + what + std::strerror(errno);
    ::close(fd);
    return -1;
  };
  if (::bind(fd, addr.get(), addr.len) != 0) return fail("");
  if (mode >= 0 && ::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) return fail("chmod: ");
  if (!owner.empty() || !group.empty()) {
    uid_t uid = static_cast<uid_t>(-1);
    gid_t gid = static_cast<gid_t>(-1);
    if (!owner.empty()) {
      const passwd* pw = ::getpwnam(owner.c_str());
      if (!pw) {
        errno = ENOENT;
        return fail("no user \"" + owner + "\": ");
      }
      uid = pw->pw_uid;
    }
    if (!group.empty()) {
      const ::group* gr = ::getgrnam(group.c_str());
      if (!gr) {
        errno = ENOENT;
        return fail("no group \"" + group + "\": ");
      }
      gid = gr->gr_gid;
    }
    if (::chown(path.c_str(), uid, gid) != 0) return fail("chown: ");
  }
  if (::listen(fd, backlog) != 0) return fail("");
  return fd;
}

int open_listen_socket(const SocketAddress& addr, int backlog, std::string& why) {
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
  if (::listen(fd, backlog) != 0) {
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

void Listener::set_service_index(size_t index) {
  service_index_ = index;
  apply_socket_options();
}

void Listener::apply_socket_options() {
  const ServiceRuntime& svc = worker_.service(service_index_);
  if (!svc.accept.is_unix()) set_tcp_options(fd_, svc.config.tcp_keepalive, true);
}

bool Listener::start() {
  apply_socket_options();
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
  if (self->closing_) return;
  if (self->paused_at_limit_) {
    const ServiceRuntime& svc = self->worker_.service(self->service_index_);
    const unsigned max = svc.config.max_connections;
    if (max != 0 && svc.state->connections.load(std::memory_order_relaxed) >= max) {
      uv_timer_start(&self->backoff_, on_backoff, kLimitPollMs, 0);
      return;
    }
    self->paused_at_limit_ = false;
  }
  uv_poll_start(&self->poll_, UV_READABLE, on_poll);
}

void Listener::resume_if_paused() {
  if (paused_at_limit_ && !closing_) on_backoff(&backoff_);
}

// max_connections reached: stop watching the socket (the kernel's backlog holds new clients) until
// a connection ends here (resume_if_paused) or, on another worker, the timer sees room.
void Listener::pause_at_limit() {
  if (paused_at_limit_) return;
  paused_at_limit_ = true;
  worker_.service(service_index_).metrics->listener_paused->Increment();
  LOG_DEBUG("service %s: max_connections reached, accepting paused",
            worker_.service(service_index_).config.name.c_str());
  uv_poll_stop(&poll_);
  uv_timer_start(&backoff_, on_backoff, kLimitPollMs, 0);
}

void Listener::accept_batch() {
  const ServiceRuntime& svc = worker_.service(service_index_);
  const unsigned max = svc.config.max_connections;
  for (int i = 0; i < kAcceptBatch; ++i) {
    if (!svc.state->try_reserve(max)) {
      pause_at_limit();
      return;
    }
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int fd =
        ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      fd_exhausted_logged_ = false;  // TCP options: inherited from the listening socket
      worker_.adopt(fd, peer, len, service_index_, max != 0);
      continue;
    }
    const int err = errno;
    svc.state->release(max);
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
