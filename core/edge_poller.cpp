#include "core/edge_poller.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>

#include "core/log.h"

namespace ferry {
namespace {

// Events taken per turn; more stay ready in the set and the loop calls again on its next turn.
constexpr int kBatch = 256;

}  // namespace

EdgePoller::~EdgePoller() {
  // Normally closed through close() before the loop ends; a poller that never started polling
  // still owns its descriptor.
  if (!polling_ && epfd_ >= 0) ::close(epfd_);
}

bool EdgePoller::start() {
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return false;
  if (uv_poll_init(loop_, &poll_, epfd_) != 0) return false;
  poll_.data = this;
  polling_ = true;
  return uv_poll_start(&poll_, UV_READABLE, on_poll) == 0;
}

int EdgePoller::add(int fd, Watch* watch) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = watch;
  return ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}

void EdgePoller::close() {
  if (!polling_) {
    if (epfd_ >= 0) ::close(epfd_);
    epfd_ = -1;
    return;
  }
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&poll_))) return;
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), on_closed);
}

void EdgePoller::on_closed(uv_handle_t* h) {
  auto* self = static_cast<EdgePoller*>(h->data);
  self->polling_ = false;
  ::close(self->epfd_);
  self->epfd_ = -1;
}

void EdgePoller::on_poll(uv_poll_t* h, int status, int /*events*/) {
  auto* self = static_cast<EdgePoller*>(h->data);
  if (status < 0) {
    LOG_ERROR("connection poller: %s", uv_strerror(status));
    return;
  }
  self->dispatch();
}

void EdgePoller::dispatch() {
  epoll_event events[kBatch];
  const int n = ::epoll_wait(epfd_, events, kBatch, 0);
  for (int i = 0; i < n; ++i) {
    auto* w = static_cast<Watch*>(events[i].data.ptr);
    w->on_ready(w->owner, events[i].events);
  }
}

}  // namespace ferry
