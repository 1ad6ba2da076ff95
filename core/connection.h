#pragma once
// One proxied connection, in either mode. Both are the same pipeline between a TLS side (a
// socket OpenSSL reads and writes directly, watched edge-triggered by the worker's EdgePoller)
// and a plaintext side (a uv_tcp_t or uv_pipe_t):
//   server mode: TLS side = the accepted client, plain side = the backend we connect to;
//                accept -> TLS handshake -> connect backend -> splice.
//   client mode: plain side = the accepted local client, TLS side = the upstream we connect to;
//                accept -> connect upstream -> TLS handshake (verified) -> splice.
//
// Owns: both sockets, the SSL object, one timer (handshake/connect, then idle), and at most one
// pool buffer per direction while bytes are in flight.
// Lives on: the worker thread that accepted it, for its whole life.
// Ends: when both directions have finished (EOF forwarded and flushed each way), or on an error,
// a timer or shutdown: close(reason) starts uv_close on every live handle and the object is
// freed from the last close callback (never inside an I/O callback).

#include <uv.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/edge_poller.h"
#include "core/end_reason.h"
#include "core/handshake_failure.h"
#include "core/openssl_ptr.h"
#include "core/proxy_protocol.h"
#include "core/runtime.h"
#include "core/tls_context.h"
#include "core/tls_write_buffer.h"

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

  bool holds_slot = false;  // counted in the service's max_connections (set by Worker::adopt)

  // Intrusive list links, owned by Worker.
  Connection* prev = nullptr;
  Connection* next = nullptr;

 private:
  enum class State { proxy_header, handshake, connecting, splicing, closing };

  // libuv callbacks: cast `data` and forward.
  static void on_tls_ready(void* self, uint32_t epoll_events);
  static void on_timer(uv_timer_t* t);
  static void on_connect(uv_connect_t* req, int status);
  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
  static void on_attempt_closed(uv_handle_t* h);
  static bool route_gate(void* arg, std::string_view server_name);
  static void on_plain_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_plain_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_plain_written(uv_write_t* req, int status);
  static void on_plain_shutdown(uv_shutdown_t* req, int status);
  static void on_handle_closed(uv_handle_t* h);

  bool client_mode() const { return service_.config.mode == ServiceMode::client; }
  void start_server_mode();
  void start_client_mode();
  void init_plain(bool unix_socket);  // plain_ as a uv_pipe_t or uv_tcp_t, counted as open
  // `bytes_waiting`: the ClientHello may already be in the socket (after a PROXY header), so
  // try the handshake now rather than wait for a readiness edge that already came.
  void begin_tls_accept(bool bytes_waiting);
  void read_proxy_header();
  bool access_allowed(const char* when);
  // Backends: each connect attempt goes to the next candidate of group_ (and, for a host name,
  // each of its addresses in turn) until one connects or every one was tried.
  void try_next_backend();
  void connect_to(const SocketAddress& to);
  void next_attempt(const std::string& why);
  void backend_up();
  void backend_exhausted();
  void send_proxy_header();
  void free_dns();
  bool watch_tls_socket();
  bool create_ssl();
  void do_handshake();
  void handshake_failed(HandshakeFailure reason, const std::string& detail);
  void handshake_done();
  void start_splicing();
  void connect_backend(const SocketAddress& to);   // server mode: plaintext (libuv connect)
  void connect_upstream(const SocketAddress& to);  // client mode: TLS (non-blocking, poll)
  void upstream_connected();
  void backend_connected(int status);
  // Errors on each side end the connection with the reason of the party on that side.
  EndReason tls_side_error() const {
    return client_mode() ? EndReason::backend_error : EndReason::client_error;
  }
  EndReason plain_side_error() const {
    return client_mode() ? EndReason::client_error : EndReason::backend_error;
  }

  // Splicing: TLS side -> plain side ("up") and plain side -> TLS side ("down").
  void pump();
  void read_tls();
  void write_plain();
  void plain_written(int status);
  void maybe_shutdown_plain();
  void plain_read(ssize_t nread);
  void flush_tls();
  bool flush_tx();
  void send_close_notify();
  void start_plain_reading();
  void update_poll();
  void set_poll(int events);
  void maybe_finish();
  void on_timeout();
  void tls_io_error(int ssl_error, const char* op);

  std::string client_address() const;
  void log_access() const;

  uv_stream_t* plain() { return &plain_.stream; }

  Worker& worker_;
  std::shared_ptr<const Runtime> runtime_;  // keeps service_ and its SSL_CTX alive
  const ServiceRuntime& service_;
  const uint64_t id_;
  int tls_fd_ = -1;       // the TLS side's socket (server: accepted; client: upstream)
  int accepted_fd_ = -1;  // client mode: the accepted socket until plain_ owns it
  SocketAddress peer_;    // the client: the TCP peer, or the address its PROXY header gave
  SocketAddress local_;   // where the client connected to (PROXY header's dst), if known
  State state_ = State::handshake;
  std::string proxy_in_;  // accept_proxy: the header bytes consumed so far

  // Backend choice. group_ is the service's or the route's; bit i of tried_ = backend i tried.
  const BackendGroup* group_ = nullptr;
  int backend_ = -1;              // index in group_ of the current attempt / the connected backend
  bool backend_counted_ = false;  // backend_'s `active` was incremented
  uint64_t tried_ = 0;
  uint64_t cursor_ = 0;
  SocketAddress upstream_;  // the address connected to (or being tried)
  uv_getaddrinfo_t dns_req_{};
  bool dns_pending_ = false;
  addrinfo* dns_result_ = nullptr;
  addrinfo* dns_next_ = nullptr;  // the next address of dns_result_ to try
  SniGate gate_{};
  std::string refused_sni_;  // the server name the gate refused, for the log line
  EndReason end_reason_ = EndReason::done;
  std::optional<TlsWriteBuffer> tx_;  // the SSL's write BIO gathers records here
  SslPtr ssl_;                        // declared after tx_: freed first

  EdgePoller::Watch watch_{};  // tls_fd_'s readiness, while watching_
  uv_timer_t timer_{};
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } plain_{};
  uv_connect_t connect_req_{};
  uv_write_t write_req_{};
  uv_shutdown_t shutdown_req_{};
  int open_handles_ = 0;
  bool plain_open_ = false;  // plain_ was initialised (and must be closed)
  bool watching_ = false;    // tls_fd_ is in the worker's EdgePoller (until it is closed)
  int poll_events_ = 0;      // UV_READABLE/UV_WRITABLE: the edges the TLS side waits for

  uint64_t start_ns_ = 0;          // uv_hrtime() at accept
  uint64_t handshake_ns_ = 0;      // accept to finished handshake; 0 until then
  uint64_t last_activity_ms_ = 0;  // loop time of the last byte moved, for the idle timer

  // TLS side -> plain side
  char* up_buf_ = nullptr;
  size_t up_len_ = 0;           // bytes in up_buf_ not yet written to the plain side
  size_t up_off_ = 0;           // first unwritten byte
  bool up_writing_ = false;     // a uv_write of up_buf_ is in flight
  bool up_want_write_ = false;  // SSL_read asked for writability
  bool tls_eof_ = false;        // close_notify or TCP EOF received on the TLS side
  bool plain_shut_ = false;     // uv_shutdown sent on the plain side
  bool up_done_ = false;        // the TLS side's EOF forwarded as a plain half-close

  // plain side -> TLS side
  char* down_buf_ = nullptr;
  size_t down_len_ = 0;
  size_t down_off_ = 0;
  bool down_want_read_ = false;  // SSL_write asked for readability
  bool plain_reading_ = false;
  bool plain_eof_ = false;
  bool down_done_ = false;  // plain EOF forwarded to the TLS side (close_notify + FIN)

  uint64_t bytes_up_ = 0;    // TLS side -> plain side
  uint64_t bytes_down_ = 0;  // plain side -> TLS side
};

}  // namespace ferry
