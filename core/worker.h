#pragma once
// A worker: one thread running one uv loop, its own listening sockets (one per service) and
// every connection accepted on them. Connections never move between workers. The main thread
// talks to a worker only through post() (a command queue drained on a uv_async_t wakeup).

#include <uv.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/buffer_pool.h"
#include "core/edge_poller.h"
#include "core/runtime.h"

namespace ferry {

class Connection;
class Listener;

class Worker {
 public:
  // `listen_fds[i]` is this worker's socket for runtime->services[i].
  Worker(int id, std::shared_ptr<const Runtime> runtime, std::vector<int> listen_fds);
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker();

  // Main thread. Each posts a command; the worker carries it out on its own thread.
  void start(std::function<void()> on_exit = {});  // on_exit runs on the worker thread at its end
  // New connections use `runtime` from now on; `listen_fds[i]` is the socket for its service i
  // (sockets kept across the reload keep their listener, the others are closed or added).
  void swap_runtime(std::shared_ptr<const Runtime> runtime, std::vector<int> listen_fds);
  // Stop accepting; let connections finish for up to `timeout`, then close the rest. The loop
  // ends when the last connection is gone.
  void drain(std::chrono::milliseconds timeout);
  void stop();  // stop accepting and close every connection now
  void join();
  size_t active_connections() const { return active_.load(std::memory_order_relaxed); }
  // After join(): whether the loop closed with no handle left (uv_loop_close() == 0).
  bool loop_closed_cleanly() const { return loop_closed_cleanly_; }

  // Worker thread.
  int id() const { return id_; }
  uv_loop_t* loop() { return &loop_; }
  BufferPool& buffers() { return buffers_; }
  BufferPool& tls_tx_buffers() { return tls_tx_buffers_; }
  EdgePoller& poller() { return poller_; }  // the connections' TLS-side sockets
  // A new client on service `service_index`; `holds_slot`: it took a max_connections slot.
  void adopt(int fd, const sockaddr_storage& peer, socklen_t peer_len, size_t service_index,
             bool holds_slot);
  const ServiceRuntime& service(size_t index) const { return runtime_->services[index]; }
  void connection_finished(Connection* c);  // from the connection's last close callback

 private:
  using Command = std::function<void(Worker&)>;
  void post(Command cmd);
  void run();
  void drain_commands();
  void apply_runtime(std::shared_ptr<const Runtime> runtime, const std::vector<int>& listen_fds);
  void begin_drain(std::chrono::milliseconds timeout);
  void shutdown_now();
  void maybe_end_loop();
  static void on_async(uv_async_t* h);
  static void on_drain_timeout(uv_timer_t* t);

  const int id_;
  uv_loop_t loop_{};
  uv_async_t async_{};
  uv_timer_t drain_timer_{};  // shutdown_timeout while draining
  EdgePoller poller_{&loop_};
  std::function<void()> on_exit_;
  std::thread thread_;
  std::shared_ptr<const Runtime> runtime_;  // for new connections
  std::vector<int> listen_fds_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  BufferPool buffers_;
  BufferPool tls_tx_buffers_{BufferPool::kTlsTxBufferSize};
  Connection* connections_ = nullptr;  // intrusive list of live connections
  uint64_t next_connection_id_ = 1;
  bool stopping_ = false;     // no longer accepting: draining or shutting down
  bool loop_ending_ = false;  // async_ is closing: post() drops commands (commands_mutex_)
  bool loop_closed_cleanly_ = false;
  std::atomic<size_t> active_{0};

  std::mutex commands_mutex_;
  std::vector<Command> commands_;  // guarded by commands_mutex_
};

}  // namespace ferry
