#pragma once
// A listening socket of one service on one worker. Sockets are created (and bound) on the main
// thread so that bind errors stop start-up; each worker gets its own SO_REUSEPORT socket and
// watches it with a uv_poll_t, accepting in batches with accept4().

#include <uv.h>

#include <chrono>
#include <string>

#include "core/runtime.h"

namespace ferry {

class Worker;

// socket + SO_REUSEADDR + SO_REUSEPORT (+ IPV6_V6ONLY) + bind + listen(backlog), non-blocking,
// close-on-exec. Returns the fd, or -1 with `why` set.
int open_listen_socket(const SocketAddress& addr, int backlog, std::string& why);

// A Unix listening socket at `addr`'s path: a stale socket file left by a dead process is
// removed first (one that a live process still listens on is an error, as is any other kind of
// file); then mode and owner/group are applied (-1 / empty: leave). Shared by all workers.
int open_unix_listen_socket(const SocketAddress& addr, int backlog, int mode,
                            const std::string& owner, const std::string& group, std::string& why);

// Per TCP socket: TCP_NODELAY, and keepalive probes when `keepalive` > 0 (idle time =
// keepalive, then 4 probes keepalive/4 apart). Set on a listening socket, they are inherited by
// every socket accepted from it (Linux copies them at accept); `clear_keepalive` then also turns
// probes off when `keepalive` is 0 (a reload may have removed tcp_keepalive).
void set_tcp_options(int fd, std::chrono::milliseconds keepalive, bool clear_keepalive = false);

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
  // A connection of this worker ended: accept again if max_connections had paused us.
  void resume_if_paused();
  int fd() const { return fd_; }
  size_t service_index() const { return service_index_; }
  void set_service_index(size_t index);  // after a reload: the same socket, maybe new options

 private:
  void apply_socket_options();  // what accepted sockets inherit (TCP listeners)
  static void on_poll(uv_poll_t* h, int status, int events);
  static void on_backoff(uv_timer_t* t);
  static void on_close(uv_handle_t* h);
  void accept_batch();
  void pause_at_limit();

  Worker& worker_;
  size_t service_index_;
  int fd_;
  uv_poll_t poll_{};
  uv_timer_t backoff_{};  // re-arms accepting after EMFILE/ENFILE
  int open_handles_ = 0;
  bool closing_ = false;
  bool fd_exhausted_logged_ = false;  // one log line per exhaustion episode
  bool paused_at_limit_ = false;      // max_connections reached; backoff_ polls for room
};

}  // namespace ferry
