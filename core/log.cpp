#include "core/log.h"

#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <ctime>

namespace ferry::log {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
thread_local int t_worker = -1;

}  // namespace

void set_level(LogLevel level) {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

bool enabled(LogLevel level) {
  return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed);
}

void set_thread_worker(int worker_id) {
  t_worker = worker_id;
}

void write(LogLevel level, uint64_t conn, const char* fmt, ...) {
  char line[2048];
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &utc);
  int w =
      snprintf(line + n, sizeof line - n, ".%03ldZ %s ", ts.tv_nsec / 1000000, to_string(level));
  n += static_cast<size_t>(w);
  if (t_worker >= 0) {
    w = conn ? snprintf(line + n, sizeof line - n, "[w%d c%llu] ", t_worker,
                        static_cast<unsigned long long>(conn))
             : snprintf(line + n, sizeof line - n, "[w%d] ", t_worker);
    n += static_cast<size_t>(w);
  }
  va_list ap;
  va_start(ap, fmt);
  w = vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  n = (w < 0) ? n : std::min(n + static_cast<size_t>(w), sizeof line - 2);
  line[n++] = '\n';
  // One write per line: atomic with respect to other threads' lines for sizes below PIPE_BUF
  // on pipes, and in practice for regular files and terminals too.
  ssize_t ignored = ::write(STDERR_FILENO, line, n);
  (void)ignored;
}

}  // namespace ferry::log
