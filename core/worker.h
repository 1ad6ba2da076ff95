#pragma once
// A worker: one thread running one uv loop, its own listening sockets (one per service) and
// every connection accepted on them. Connections never move between workers. The main thread
// talks to a worker only through post() (a command queue drained on a uv_async_t wakeup).

#include <uv.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/buffer_pool.h"
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

  // Main thread.
  void start();
  void stop();  // stop accepting, close every connection, end the loop; then join()
  void join();
  size_t active_connections() const { return active_.load(std::memory_order_relaxed); }
  // After join(): whether the loop closed with no handle left (uv_loop_close() == 0).
  bool loop_closed_cleanly() const { return loop_closed_cleanly_; }

  // Worker thread.
  int id() const { return id_; }
  uv_loop_t* loop() { return &loop_; }
  BufferPool& buffers() { return buffers_; }
  void adopt(int fd, const sockaddr_storage& peer, socklen_t peer_len, size_t service_index);
  void connection_finished(Connection* c);  // from the connection's last close callback

 private:
  using Command = std::function<void(Worker&)>;
  void post(Command cmd);
  void run();
  void drain_commands();
  void shutdown_now();
  static void on_async(uv_async_t* h);

  const int id_;
  uv_loop_t loop_{};
  uv_async_t async_{};
  std::thread thread_;
  std::shared_ptr<const Runtime> runtime_;  // for new connections
  std::vector<int> listen_fds_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  BufferPool buffers_;
  Connection* connections_ = nullptr;  // intrusive list of live connections
  uint64_t next_connection_id_ = 1;
  bool stopping_ = false;
  bool loop_closed_cleanly_ = false;
  std::atomic<size_t> active_{0};

  std::mutex commands_mutex_;
  std::vector<Command> commands_;  // guarded by commands_mutex_
};

}  // namespace ferry
