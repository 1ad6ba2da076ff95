#pragma once
// The TLS side's write path: a BIO that gathers the records OpenSSL writes in one pool buffer and
// sends them to the socket with one send() when the buffer is full or flushed. OpenSSL writes a
// record (at most ~16 KiB) per BIO write; without this, a 64 KiB SSL_write costs four syscalls,
// with it one. The buffer is taken from the worker's pool on the first write and given back as
// soon as everything in it is sent, so idle connections hold none. Reads use a plain socket BIO.
//
// Non-blocking semantics as OpenSSL expects them: a write that finds no room (and cannot make
// any) and a flush that cannot finish set the BIO's retry flag, so SSL_* report WANT_WRITE; the
// caller waits for writability and calls again. A socket error is kept (errno) and reported as a
// failed write/flush without retry (SSL_ERROR_SYSCALL).

#include <openssl/bio.h>

#include <cstddef>

namespace ferry {

class BufferPool;

class TlsWriteBuffer {
 public:
  TlsWriteBuffer(BufferPool& pool, int fd) : pool_(pool), fd_(fd) {}
  TlsWriteBuffer(const TlsWriteBuffer&) = delete;
  TlsWriteBuffer& operator=(const TlsWriteBuffer&) = delete;
  ~TlsWriteBuffer();

  // A new BIO writing into this buffer (not owned: SSL_set_bio hands it to the SSL object, and
  // this buffer must outlive it).
  BIO* make_bio();

  enum class Flush { done, blocked, error };
  Flush flush();  // send what is buffered
  size_t pending() const { return len_ - off_; }
  void discard();  // drop what is buffered (the peer is gone); the error stays
  // While held, OpenSSL's flush requests are acknowledged without sending: the caller flushes
  // after SSL_do_handshake returns, so a flight OpenSSL flushes message by message (a TLS 1.3
  // server's two session tickets, say) leaves in one send().
  void hold_flushes(bool hold) { hold_ = hold; }
  int error() const { return error_; }  // errno of a failed send, 0 if none

 private:
  static int bio_write(BIO* bio, const char* data, size_t len, size_t* written);
  static long bio_ctrl(BIO* bio, int cmd, long num, void* ptr);
  int write(const char* data, size_t len, size_t* written, BIO* bio);

  BufferPool& pool_;
  int fd_;
  char* buf_ = nullptr;  // from pool_ while bytes are pending
  size_t off_ = 0;       // first unsent byte
  size_t len_ = 0;       // end of buffered bytes
  int error_ = 0;
  bool hold_ = false;
};

}  // namespace ferry
