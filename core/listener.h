#pragma once
// A listening socket of one service on one worker. Sockets are created (and bound) on the main
// thread so that bind errors stop start-up; each worker gets its own SO_REUSEPORT socket and
// watches it with a uv_poll_t, accepting in batches with accept4().

#include <uv.h>

#include <string>

#include "core/runtime.h"

namespace ferry {

class Worker;

// socket + SO_REUSEADDR + SO_REUSEPORT (+ IPV6_V6ONLY) + bind + listen, non-blocking,
// close-on-exec. Returns the fd, or -1 with `why` set.
int open_listen_socket(const SocketAddress& addr, std::string& why);

// Whether another process already listens on `addr`. SO_REUSEPORT would otherwise let a second
// ferry (same user) bind the same port silently and take half the traffic: bind once without it
// first, so that case fails with "Address already in use" like any other.
bool address_in_use(const SocketAddress& addr, std::string& why);

class Listener {
 public:
  Listener(Worker& worker, size_t service_index, int fd);
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  bool start();
  void close();  // stop accepting; the fd is closed once the handles are
  bool closed() const { return closing_ && open_handles_ == 0; }
  int fd() const { return fd_; }
  size_t service_index() const { return service_index_; }
  void set_service_index(size_t index) { service_index_ = index; }  // after a reload

 private:
  static void on_poll(uv_poll_t* h, int status, int events);
  static void on_backoff(uv_timer_t* t);
  static void on_close(uv_handle_t* h);
  void accept_batch();

  Worker& worker_;
  size_t service_index_;
  int fd_;
  uv_poll_t poll_{};
  uv_timer_t backoff_{};  // re-arms accepting after EMFILE/ENFILE
  int open_handles_ = 0;
  bool closing_ = false;
  bool fd_exhausted_logged_ = false;  // one log line per exhaustion episode
};

}  // namespace ferry
