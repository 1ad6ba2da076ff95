#pragma once
// Edge-triggered readiness for the sockets OpenSSL reads and writes (the TLS side of each
// connection), nested in a worker's libuv loop: one epoll set of the worker's own, watched by one
// uv_poll_t.
//
// Why not a uv_poll_t per socket: libuv 1.44 removes a socket from its epoll set on every
// uv_poll_start and adds it back on the next loop turn, so each change of the events a
// connection waits for costs two or three epoll_ctl calls, and uv_poll_init probes the socket
// with two more and an ioctl: 14 system calls per proxied connection in the handshake benchmark.
// Here a socket is added once, for reading and writing, edge-triggered, and leaves the set when
// it is closed: one epoll_ctl per connection.
//
// Edge-triggered means a watch is told when a socket *becomes* readable or writable. The owner
// keeps reading (writing) until the call would block before it waits for the next edge, and it
// ignores edges it did not ask for; every wait it asks for follows a read or write that got
// EAGAIN, or it goes ahead without waiting (see Connection::set_poll).
//
// Lifetime: the socket must stay open (and registered) for as long as its Watch may be called,
// and it must not be dup()ed (the epoll set drops a socket when its last descriptor closes). A
// watch may be called with events from one batch until its owner ignores them; owners are freed
// only from libuv close callbacks, which never run inside a batch.

#include <uv.h>

#include <cstdint>

namespace ferry {

class EdgePoller {
 public:
  struct Watch {
    void (*on_ready)(void* owner, uint32_t events) = nullptr;  // EPOLLIN/OUT/ERR/HUP bits
    void* owner = nullptr;
  };

  explicit EdgePoller(uv_loop_t* loop) : loop_(loop) {}
  EdgePoller(const EdgePoller&) = delete;
  EdgePoller& operator=(const EdgePoller&) = delete;
  ~EdgePoller();

  bool start();  // false (errno set) if the epoll set cannot be made or watched
  // Watch `fd` for reading and writing until it is closed. 0 or a negative errno.
  int add(int fd, Watch* watch);
  void close();  // stops dispatching; the epoll set is closed from the handle's close callback
  bool open() const { return epfd_ >= 0; }

 private:
  static void on_poll(uv_poll_t* h, int status, int events);
  static void on_closed(uv_handle_t* h);
  void dispatch();

  uv_loop_t* loop_;
  uv_poll_t poll_{};
  int epfd_ = -1;
  bool polling_ = false;  // poll_ initialised (and to be closed)
};

}  // namespace ferry
