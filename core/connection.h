#pragma once
// One proxied client connection (server mode).
//
// Owns: the accepted client socket (driven by OpenSSL directly, watched by a uv_poll_t), the SSL
// object, the backend uv_tcp_t, one timer (handshake, then connect, then idle), and at most one
// pool buffer per direction while bytes are in flight.
// Lives on: the worker thread that accepted it, for its whole life.
// Ends: when both directions have finished (EOF forwarded and flushed each way), or on an error,
// a timer or shutdown: close(reason) starts uv_close on every live handle and the object is
// freed from the last close callback (never inside an I/O callback).

#include <uv.h>

#include <cstdint>
#include <memory>

#include "core/end_reason.h"
#include "core/handshake_failure.h"
#include "core/openssl_ptr.h"
#include "core/runtime.h"

namespace ferry {

class Worker;

class Connection {
 public:
  Connection(Worker& worker, std::shared_ptr<const Runtime> runtime, const ServiceRuntime& service,
             int fd, const sockaddr_storage& peer, socklen_t peer_len, uint64_t id);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  void start();
  void close(EndReason reason);  // idempotent
  bool established() const { return state_ == State::connecting || state_ == State::splicing; }

  // Intrusive list links, owned by Worker.
  Connection* prev = nullptr;
  Connection* next = nullptr;

 private:
  enum class State { handshake, connecting, splicing, closing };

  // libuv callbacks: cast `data` and forward.
  static void on_client_poll(uv_poll_t* h, int status, int events);
  static void on_timer(uv_timer_t* t);
  static void on_connect(uv_connect_t* req, int status);
  static void on_backend_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_backend_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_backend_written(uv_write_t* req, int status);
  static void on_backend_shutdown(uv_shutdown_t* req, int status);
  static void on_handle_closed(uv_handle_t* h);

  void do_handshake();
  void handshake_failed(HandshakeFailure reason, const std::string& detail);
  void handshake_done();
  void connect_backend();
  void backend_connected(int status);
  void backend_connect_failed(const char* why);

  // Splicing: client -> backend ("up") and backend -> client ("down").
  void pump();
  void read_from_client();
  void write_to_backend();
  void backend_written(int status);
  void maybe_shutdown_backend();
  void backend_read(ssize_t nread);
  void flush_to_client();
  void send_close_notify();
  void start_backend_reading();
  void update_poll();
  void set_poll(int events);
  void maybe_finish();
  void on_timeout();
  void client_io_error(int ssl_error, const char* op);

  std::string client_address() const;
  void log_access() const;

  Worker& worker_;
  std::shared_ptr<const Runtime> runtime_;  // keeps service_ and its SSL_CTX alive
  const ServiceRuntime& service_;
  const uint64_t id_;
  int fd_;
  const SocketAddress peer_;  // the client
  State state_ = State::handshake;
  EndReason end_reason_ = EndReason::done;
  SslPtr ssl_;

  uv_poll_t client_poll_{};
  uv_timer_t timer_{};
  uv_tcp_t backend_{};
  uv_connect_t connect_req_{};
  uv_write_t write_req_{};
  uv_shutdown_t shutdown_req_{};
  int open_handles_ = 0;
  bool backend_open_ = false;  // backend_ was initialised (and must be closed)
  int poll_events_ = 0;        // events client_poll_ currently waits for

  uint64_t start_ns_ = 0;          // uv_hrtime() at accept
  uint64_t handshake_ns_ = 0;      // accept to finished handshake; 0 until then
  uint64_t last_activity_ms_ = 0;  // loop time of the last byte moved, for the idle timer

  // client -> backend
  char* up_buf_ = nullptr;
  size_t up_len_ = 0;           // bytes in up_buf_ not yet written to the backend
  size_t up_off_ = 0;           // first unwritten byte
  bool up_writing_ = false;     // a uv_write of up_buf_ is in flight
  bool up_want_write_ = false;  // SSL_read asked for writability
  bool client_eof_ = false;     // close_notify or TCP EOF received from the client
  bool backend_shut_ = false;   // uv_shutdown sent to the backend
  bool up_done_ = false;        // client EOF forwarded as a backend half-close

  // backend -> client
  char* down_buf_ = nullptr;
  size_t down_len_ = 0;
  size_t down_off_ = 0;
  bool down_want_read_ = false;  // SSL_write asked for readability
  bool backend_reading_ = false;
  bool backend_eof_ = false;
  bool down_done_ = false;  // backend EOF forwarded to the client (close_notify + FIN)

  uint64_t bytes_up_ = 0;
  uint64_t bytes_down_ = 0;
};

}  // namespace ferry
