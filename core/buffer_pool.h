#pragma once
// Per-worker pool of fixed-size I/O buffers. Connections take one per direction only while
// bytes are in flight and give it back when it empties, so idle connections hold none.
// Worker-thread only: no locking.

#include <cstddef>
#include <memory>
#include <vector>

namespace ferry {

class BufferPool {
 public:
  static constexpr size_t kBufferSize = 64 * 1024;  // plaintext: one read or one write
  // The TLS side's gathered records: a full plaintext buffer as records, with their headers,
  // tags and padding (4 x the per-record maximum overhead), so one read from the backend leaves
  // in one send().
  static constexpr size_t kTlsTxBufferSize = kBufferSize + 4 * 320;

  explicit BufferPool(size_t size = kBufferSize, size_t max_free = 256)
      : size_(size), max_free_(max_free) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  char* get() {
    if (free_.empty()) return new char[size_];
    char* b = free_.back().release();
    free_.pop_back();
    return b;
  }

  void put(char* b) {
    if (!b) return;
    if (free_.size() >= max_free_) {
      delete[] b;
      return;
    }
    free_.emplace_back(b);
  }

  size_t free_count() const { return free_.size(); }
  size_t size() const { return size_; }

 private:
  size_t size_;
  size_t max_free_;
  std::vector<std::unique_ptr<char[]>> free_;
};

}  // namespace ferry
