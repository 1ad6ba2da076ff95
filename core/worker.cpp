#include "core/worker.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/connection.h"
#include "core/listener.h"
#include "core/log.h"
#include "core/metrics.h"

namespace ferry {

Worker::Worker(int id, std::shared_ptr<const Runtime> runtime, std::vector<int> listen_fds)
    : id_(id), runtime_(std::move(runtime)), listen_fds_(std::move(listen_fds)) {
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &async_, on_async);
  async_.data = this;
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  if (!poller_.start()) {
    // Without it no connection can be served: refuse them (adopt) and say why once.
    LOG_ERROR("worker %d: cannot create its connection poller: %s", id_, std::strerror(errno));
  }
}

Worker::~Worker() {
  if (thread_.joinable()) thread_.join();
  listeners_.clear();
}

void Worker::start(std::function<void()> on_exit) {
  on_exit_ = std::move(on_exit);
  // Workers block every signal: signals are handled on the main thread only.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  thread_ = std::thread([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void Worker::post(Command cmd) {
  std::lock_guard lock(commands_mutex_);
  // Once the loop is ending its async handle is closed: a late command (a second SIGTERM
  // after this worker already drained) has nothing left to act on.
  if (loop_ending_) return;
  commands_.push_back(std::move(cmd));
  uv_async_send(&async_);
}

void Worker::stop() {
  post([](Worker& w) { w.shutdown_now(); });
}

void Worker::drain(std::chrono::milliseconds timeout) {
  post([timeout](Worker& w) { w.begin_drain(timeout); });
}

void Worker::swap_runtime(std::shared_ptr<const Runtime> runtime, std::vector<int> listen_fds) {
  post([runtime = std::move(runtime), fds = std::move(listen_fds)](Worker& w) {
    w.apply_runtime(runtime, fds);
  });
}

void Worker::apply_runtime(std::shared_ptr<const Runtime> runtime,
                           const std::vector<int>& listen_fds) {
  if (stopping_) {
    // Draining: the new sockets will never be watched, but they are ours to close.
    for (int fd : listen_fds) {
      bool kept = false;
      for (auto& l : listeners_) kept = kept || l->fd() == fd;
      if (!kept) ::close(fd);
    }
    return;
  }
  runtime_ = std::move(runtime);  // established connections keep the Runtime they started with
  std::erase_if(listeners_, [](const std::unique_ptr<Listener>& l) { return l->closed(); });
  std::vector<bool> taken(listen_fds.size(), false);
  for (auto& l : listeners_) {
    bool kept = false;
    for (size_t i = 0; i < listen_fds.size() && !kept; ++i) {
      if (listen_fds[i] == l->fd()) {
        l->set_service_index(i);  // same socket, maybe another position in the new config
        taken[i] = kept = true;
      }
    }
    if (!kept) l->close();  // removed from the config: the socket is closed
  }
  for (size_t i = 0; i < listen_fds.size(); ++i) {
    if (taken[i]) continue;
    auto l = std::make_unique<Listener>(*this, i, listen_fds[i]);
    if (!l->start()) LOG_ERROR("cannot watch the new listener of service %zu", i);
    listeners_.push_back(std::move(l));
  }
}

void Worker::begin_drain(std::chrono::milliseconds timeout) {
  if (stopping_) return;
  stopping_ = true;
  for (auto& l : listeners_) l->close();
  // Connections still in their handshake are not established yet: nothing to finish.
  for (Connection* c = connections_; c; c = c->next) {
    if (!c->established()) c->close(EndReason::shutdown);
  }
  if (connections_) {
    LOG_INFO("draining %zu connection%s for up to %lldms", active_connections(),
             active_connections() == 1 ? "" : "s", static_cast<long long>(timeout.count()));
    uv_timer_start(&drain_timer_, on_drain_timeout, static_cast<uint64_t>(timeout.count()), 0);
  }
  maybe_end_loop();
}

void Worker::on_drain_timeout(uv_timer_t* t) {
  auto* self = static_cast<Worker*>(t->data);
  LOG_INFO("shutdown_timeout reached: closing %zu connection%s", self->active_connections(),
           self->active_connections() == 1 ? "" : "s");
  self->shutdown_now();
}

void Worker::maybe_end_loop() {
  // The loop runs while a handle is open: once draining and the last connection is gone, close
  // ours so uv_run returns.
  if (!stopping_ || connections_ || loop_ending_) return;
  {
    std::lock_guard lock(commands_mutex_);
    loop_ending_ = true;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&drain_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  poller_.close();
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::on_async(uv_async_t* h) {
  static_cast<Worker*>(h->data)->drain_commands();
}

void Worker::drain_commands() {
  // uv_async_send coalesces wakeups: take the whole queue each time.
  std::vector<Command> batch;
  {
    std::lock_guard lock(commands_mutex_);
    batch.swap(commands_);
  }
  for (auto& cmd : batch) cmd(*this);
}

void Worker::run() {
  log::set_thread_worker(id_);
  for (size_t i = 0; i < listen_fds_.size(); ++i) {
    auto l = std::make_unique<Listener>(*this, i, listen_fds_[i]);
    if (!l->start()) LOG_ERROR("cannot watch listener for service %zu", i);
    listeners_.push_back(std::move(l));
  }
  LOG_DEBUG("worker running with %zu listeners", listeners_.size());
  uv_run(&loop_, UV_RUN_DEFAULT);
  const int rc = uv_loop_close(&loop_);
  loop_closed_cleanly_ = rc == 0;
  if (rc != 0) LOG_ERROR("worker loop closed with live handles: %s", uv_strerror(rc));
  LOG_DEBUG("worker stopped");
  if (on_exit_) on_exit_();
}

void Worker::shutdown_now() {
  stopping_ = true;
  for (auto& l : listeners_) l->close();
  // close() only starts closing; connections unlink themselves from their last close callback.
  for (Connection* c = connections_; c; c = c->next) c->close(EndReason::shutdown);
  maybe_end_loop();
}

void Worker::adopt(int fd, const sockaddr_storage& peer, socklen_t peer_len, size_t service_index,
                   bool holds_slot) {
  const ServiceRuntime& service = runtime_->services[service_index];
  auto refuse = [&](prometheus::Counter* counter, const char* why) {
    ::close(fd);
    if (holds_slot) service.state->release(service.config.max_connections);
    if (counter) {
      counter->Increment();
      LOG_DEBUG(
          "service %s: %s %s", service.config.name.c_str(), why,
          SocketAddress::from(reinterpret_cast<const sockaddr*>(&peer), peer_len).str().c_str());
    }
  };
  if (stopping_) {
    refuse(nullptr, "");
    return;
  }
  // Access lists before any TLS work. With accept_proxy they apply to the address the header
  // carries (checked by the connection); the peer itself must be allowed to send one.
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  if (service.config.accept_proxy) {
    if (!service.config.accept_proxy_from.empty() &&
        !cidr_match(service.config.accept_proxy_from, sa)) {
      refuse(service.metrics->rejected_proxy_not_allowed, "PROXY header not accepted from");
      return;
    }
  } else if (!service.admits(sa)) {
    refuse(service.metrics->rejected_denied, "denied");
    return;
  }
  auto* c = new Connection(*this, runtime_, service, fd, peer, peer_len, next_connection_id_++);
  c->holds_slot = holds_slot;
  c->next = connections_;
  if (connections_) connections_->prev = c;
  connections_ = c;
  active_.fetch_add(1, std::memory_order_relaxed);
  c->start();
}

void Worker::connection_finished(Connection* c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (connections_ == c) connections_ = c->next;
  delete c;  // releases its max_connections slot
  active_.fetch_sub(1, std::memory_order_relaxed);
  for (auto& l : listeners_) l->resume_if_paused();
  maybe_end_loop();
}

}  // namespace ferry
