#pragma once
// Leveled logging to stderr. One line per call, written with a single write(2) so lines from
// different threads never interleave. Worker threads set their id once; connection ids are
// passed per call.
//
// Formats (set_format):
//   text  2026-11-22T12:00:00.123Z info [w0 c12] message
//   json  {"time":"2026-11-22T12:00:00.123Z","level":"info","worker":0,"conn":12,"msg":"message"}
// Journal mode (stderr is the journal: JOURNAL_STREAM names stderr's device:inode): each line
// starts with the sd-daemon(3) priority ("<6>") and carries no timestamp; journald keeps its own.

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.h"

namespace ferry::log {

void set_level(LogLevel level);
bool enabled(LogLevel level);

void set_format(LogFormat format);

// Access lines on or off (`access_log`); they are written at info.
void set_access_log(bool on);
bool access_enabled();  // access_log is on and info is enabled

// Re-examines JOURNAL_STREAM and stderr and sets journal mode accordingly. Runs once at start-up
// by itself; call it again only after redirecting stderr or changing the environment (tests).
bool detect_journal();

// The current thread's worker id, shown as "[wN]" (-1: main thread, no tag).
void set_thread_worker(int worker_id);

// printf-style. `conn` > 0 adds "[wN cM]".
void write(LogLevel level, uint64_t conn, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

// One finished connection. Empty strings are unknown: "-" in text, null in JSON.
struct AccessRecord {
  uint64_t conn = 0;
  std::string_view service;
  std::string_view client_addr;  // "127.0.0.1", "::1" (no brackets)
  uint16_t client_port = 0;
  std::string_view sni;
  std::string_view alpn;
  std::string_view version;  // "TLSv1.3"; only for a finished handshake
  std::string_view cipher;   // IANA name; only for a finished handshake
  bool resumed = false;
  std::string_view client_cert;  // the client certificate's subject, RFC 2253
  std::string_view backend;      // "127.0.0.1:8080"
  uint64_t to_backend = 0;       // plaintext bytes
  uint64_t to_client = 0;
  double handshake_s = -1;  // < 0: no finished handshake
  double duration_s = 0;
  std::string_view end;  // the close reason
};

// Writes the access line (when access_enabled()):
//   text  ... info [w0 c12] access service=web client=127.0.0.1:41234 version=TLSv1.3 ...
//   json  {"time":...,"level":"info","worker":0,"conn":12,"type":"access","service":"web",...}
void access(const AccessRecord& r);

// Exposed for tests.
void append_json_string(std::string& out, std::string_view s);  // with the quotes
void append_text_value(std::string& out, std::string_view s);   // quoted only when needed

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
