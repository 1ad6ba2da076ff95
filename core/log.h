#pragma once
// Leveled logging to stderr. One line per call, written with a single write(2) so lines from
// different threads never interleave. Worker threads set their id once; connection ids are
// passed per call.

#include <atomic>
#include <cstdint>

#include "config/config.h"

namespace ferry::log {

void set_level(LogLevel level);
bool enabled(LogLevel level);

// The current thread's worker id, shown as "[wN]" (-1: main thread, no tag).
void set_thread_worker(int worker_id);

// printf-style. `conn` > 0 adds "[wN cM]".
void write(LogLevel level, uint64_t conn, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

}  // namespace ferry::log

#define FERRY_LOG(level, conn, ...)                                                  \
  do {                                                                               \
    if (::ferry::log::enabled(level)) ::ferry::log::write(level, conn, __VA_ARGS__); \
  } while (0)
#define LOG_ERROR(...) FERRY_LOG(::ferry::LogLevel::error, 0, __VA_ARGS__)
#define LOG_WARN(...) FERRY_LOG(::ferry::LogLevel::warn, 0, __VA_ARGS__)
#define LOG_INFO(...) FERRY_LOG(::ferry::LogLevel::info, 0, __VA_ARGS__)
#define LOG_DEBUG(...) FERRY_LOG(::ferry::LogLevel::debug, 0, __VA_ARGS__)
#define CLOG_WARN(conn, ...) FERRY_LOG(::ferry::LogLevel::warn, conn, __VA_ARGS__)
#define CLOG_INFO(conn, ...) FERRY_LOG(::ferry::LogLevel::info, conn, __VA_ARGS__)
#define CLOG_DEBUG(conn, ...) FERRY_LOG(::ferry::LogLevel::debug, conn, __VA_ARGS__)
