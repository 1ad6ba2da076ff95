#include "core/tls_write_buffer.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/buffer_pool.h"

namespace ferry {
namespace {

BIO_METHOD* method() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* created =
        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ferry TLS write buffer");
    if (!created) std::abort();  // out of memory at start-up
    return created;
  }();
  return m;
}

}  // namespace

TlsWriteBuffer::~TlsWriteBuffer() {
  pool_.put(buf_);
}

BIO* TlsWriteBuffer::make_bio() {
  static std::once_flag once;
  std::call_once(once, [] {
    BIO_meth_set_write_ex(method(), bio_write);
    BIO_meth_set_ctrl(method(), bio_ctrl);
  });
  BIO* bio = BIO_new(method());
  if (!bio) return nullptr;
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  return bio;
}

int TlsWriteBuffer::bio_write(BIO* bio, const char* data, size_t len, size_t* written) {
  return static_cast<TlsWriteBuffer*>(BIO_get_data(bio))->write(data, len, written, bio);
}

int TlsWriteBuffer::write(const char* data, size_t len, size_t* written, BIO* bio) {
  BIO_clear_retry_flags(bio);
  *written = 0;
  if (error_ != 0) {
    errno = error_;
    return 0;
  }
  if (!buf_) buf_ = pool_.get();
  if (pool_.size() - len_ < len) {
    // No room at the end: send what we have, then reuse the front.
    if (flush() == Flush::error) {
      errno = error_;
      return 0;
    }
    if (!buf_) buf_ = pool_.get();
    if (off_ > 0) {
      std::memmove(buf_, buf_ + off_, len_ - off_);
      len_ -= off_;
      off_ = 0;
    }
  }
  const size_t room = pool_.size() - len_;
  if (room == 0) {
    BIO_set_retry_write(bio);
    return 0;
  }
  // A record larger than the room left goes in part; OpenSSL keeps the rest and retries.
  const size_t n = len < room ? len : room;
  std::memcpy(buf_ + len_, data, n);
  len_ += n;
  *written = n;
  return 1;
}

TlsWriteBuffer::Flush TlsWriteBuffer::flush() {
  if (error_ != 0) return Flush::error;
  while (off_ < len_) {
    const ssize_t n = ::send(fd_, buf_ + off_, len_ - off_, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Flush::blocked;
    error_ = n < 0 ? errno : EPIPE;
    return Flush::error;
  }
  off_ = len_ = 0;
  pool_.put(buf_);  // nothing pending: give the buffer back
  buf_ = nullptr;
  return Flush::done;
}

void TlsWriteBuffer::discard() {
  off_ = len_ = 0;
  pool_.put(buf_);
  buf_ = nullptr;
}

long TlsWriteBuffer::bio_ctrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {
  auto* self = static_cast<TlsWriteBuffer*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH: {
      BIO_clear_retry_flags(bio);
      if (self->hold_) return 1;
      const Flush r = self->flush();
      if (r == Flush::done) return 1;
      if (r == Flush::blocked) {
        BIO_set_retry_write(bio);
      } else {
        errno = self->error_;
      }
      return 0;
    }
    case BIO_CTRL_WPENDING:
      return static_cast<long>(self->pending());
    case BIO_CTRL_PENDING:
      return 0;
    default:
      return 0;
  }
}

}  // namespace ferry
