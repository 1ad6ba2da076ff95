#include "core/worker.h"

#include <signal.h>
#include <unistd.h>

#include "core/connection.h"
#include "core/listener.h"
#include "core/log.h"

namespace ferry {

Worker::Worker(int id, std::shared_ptr<const Runtime> runtime, std::vector<int> listen_fds)
    : id_(id), runtime_(std::move(runtime)), listen_fds_(std::move(listen_fds)) {
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &async_, on_async);
  async_.data = this;
}

Worker::~Worker() {
  if (thread_.joinable()) thread_.join();
  listeners_.clear();
}

void Worker::start() {
  // Workers block every signal: signals are handled on the main thread only.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  thread_ = std::thread([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void Worker::post(Command cmd) {
  {
    std::lock_guard lock(commands_mutex_);
    commands_.push_back(std::move(cmd));
  }
  uv_async_send(&async_);
}

void Worker::stop() {
  post([](Worker& w) { w.shutdown_now(); });
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
}

void Worker::shutdown_now() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& l : listeners_) l->close();
  // close() only starts closing; connections unlink themselves from their last close callback.
  for (Connection* c = connections_; c; c = c->next) c->close(EndReason::shutdown);
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

void Worker::adopt(int fd, const sockaddr_storage& peer, socklen_t peer_len, size_t service_index) {
  if (stopping_) {
    ::close(fd);
    return;
  }
  const ServiceRuntime& service = runtime_->services[service_index];
  auto* c = new Connection(*this, runtime_, service, fd, peer, peer_len, next_connection_id_++);
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
  delete c;
  active_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace ferry
