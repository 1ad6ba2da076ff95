#pragma once
// The main thread: binds every listening socket, starts the workers, handles signals and runs
// until asked to stop.

#include <uv.h>

#include <memory>
#include <vector>

#include "core/runtime.h"

namespace ferry {

class Worker;

class Server {
 public:
  explicit Server(std::shared_ptr<const Runtime> runtime);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // Create one SO_REUSEPORT socket per (worker, service). Errors carry the accept key's position.
  bool bind(std::vector<ConfigError>& errors);

  // Start the workers and block until SIGTERM/SIGINT; returns the process exit code.
  int run();

 private:
  static void on_signal(uv_signal_t* h, int signum);
  void stop();

  std::shared_ptr<const Runtime> runtime_;
  unsigned workers_count_;
  std::vector<std::vector<int>> listen_fds_;  // [worker][service]
  std::vector<std::unique_ptr<Worker>> workers_;
  uv_loop_t loop_{};
  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  bool stopping_ = false;
};

}  // namespace ferry
