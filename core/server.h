#pragma once
// The main thread: binds every listening socket, starts the workers, and handles signals,
// reloads (SIGHUP or a changed certificate file), systemd notifications and the graceful stop.

#include <uv.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/runtime.h"

namespace ferry {

class Metrics;
class Worker;

class Server {
 public:
  Server(std::shared_ptr<const Runtime> runtime, Metrics& metrics);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // Create one SO_REUSEPORT socket per (worker, service), or take the systemd-passed one.
  // Errors carry the accept key's position.
  bool bind(std::vector<ConfigError>& errors);

  // Start the workers and block until they have all stopped; returns the process exit code.
  int run();

 private:
  using ListenerFds = std::vector<int>;  // one socket per worker

  static void on_signal(uv_signal_t* h, int signum);
  static void on_workers_exited(uv_async_t* h);
  static void on_status_timer(uv_timer_t* t);
  static void on_watchdog_timer(uv_timer_t* t);
  static void on_file_event(uv_fs_event_t* h, const char* filename, int events, int status);
  static void on_watch_debounce(uv_timer_t* t);

  // Sockets for `svc`, reusing the ones in `current` for an unchanged address.
  bool open_listeners(const ServiceRuntime& svc, const std::map<std::string, ListenerFds>& current,
                      std::map<std::string, ListenerFds>& out, std::string& why);
  void reload(const char* cause);  // never throws
  void reload_now(const char* cause);
  void stop(int signum);
  void update_file_watches();
  std::vector<std::string> current_fingerprints() const;  // reads every watched file
  void close_main_handles();
  void close_watches();

  std::shared_ptr<const Runtime> runtime_;
  Metrics& metrics_;
  unsigned workers_count_;
  std::map<std::string, ListenerFds> listeners_;  // listen_key() -> one fd per worker
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> workers_running_{0};

  uv_loop_t loop_{};
  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  uv_async_t workers_exited_{};
  uv_timer_t status_timer_{};                   // systemd STATUS= with the connection count
  uv_timer_t watchdog_timer_{};                 // WATCHDOG=1 at half of WATCHDOG_USEC
  uv_timer_t watch_debounce_{};                 // a burst of file events becomes one reload check
  std::vector<uv_fs_event_t*> watches_;         // directories of cert/key files; freed on close
  std::vector<std::string> seen_fingerprints_;  // per service, as last loaded or seen
  bool watch_blocked_logged_ = false;  // out of descriptors: said once per episode
  bool stopping_ = false;
};

}  // namespace ferry
