#include "core/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace ferry::log {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
std::atomic<int> g_format{static_cast<int>(LogFormat::text)};
std::atomic<bool> g_access{true};
std::atomic<bool> g_journal{false};
thread_local int t_worker = -1;
thread_local std::string t_line;  // reused per thread: no allocation per line once warm

[[maybe_unused]] const bool g_journal_detected = detect_journal();

// sd-daemon(3) priorities: SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG.
char journal_priority(LogLevel level) {
  switch (level) {
    case LogLevel::error:
      return '3';
    case LogLevel::warn:
      return '4';
    case LogLevel::info:
      return '6';
    case LogLevel::debug:
      return '7';
  }
  return '6';
}

// "2026-11-22T12:00:00.123Z"
void append_time(std::string& out) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  char buf[40];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
  const int w = snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
  if (w > 0) n += static_cast<size_t>(w);
  out.append(buf, n);
}

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  const int n = snprintf(buf, sizeof buf, "%" PRIu64, v);
  out.append(buf, static_cast<size_t>(n));
}

void append_seconds(std::string& out, double s, int decimals) {
  char buf[48];
  const int n = snprintf(buf, sizeof buf, "%.*f", decimals, s);
  out.append(buf, static_cast<size_t>(n));
}

bool json() {
  return g_format.load(std::memory_order_relaxed) == static_cast<int>(LogFormat::json);
}

// Everything before the message: priority or time, level, worker and connection.
// JSON leaves the object open for more members.
void begin_line(std::string& out, LogLevel level, uint64_t conn, bool as_json) {
  out.clear();
  const bool journal = g_journal.load(std::memory_order_relaxed);
  if (journal) {
    out += '<';
    out += journal_priority(level);
    out += '>';
  }
  if (as_json) {
    out += '{';
    if (!journal) {
      out += "\"time\":\"";
      append_time(out);
      out += "\",";
    }
    out += "\"level\":\"";
    out += to_string(level);
    out += '"';
    if (t_worker >= 0) {
      out += ",\"worker\":";
      append_uint(out, static_cast<uint64_t>(t_worker));
    }
    if (conn) {
      out += ",\"conn\":";
      append_uint(out, conn);
    }
    return;
  }
  if (!journal) {
    append_time(out);
    out += ' ';
  }
  out += to_string(level);
  out += ' ';
  if (t_worker >= 0) {
    out += "[w";
    append_uint(out, static_cast<uint64_t>(t_worker));
    if (conn) {
      out += " c";
      append_uint(out, conn);
    }
    out += "] ";
  }
}

// One write(2) per line; more only if the kernel takes part of it (a signal, a full disk).
void emit(std::string& line) {
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t w = ::write(STDERR_FILENO, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
}

// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 if the byte there starts none.
// Rejects overlong forms, surrogates and code points above U+10FFFF (RFC 3629).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  if (c < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if ((at(i + k) & 0xC0) != 0x80) return 0;
  }
  return len;
}

constexpr char kHex[] = "0123456789abcdef";

// The escapes JSON strings and quoted text values share: \" \\ \n \r \t, other control
// characters as `control_prefix` and two hex digits ("\u00" in JSON, "\x" in text), and any
// other byte as it is.
void append_escaped(std::string& out, unsigned char c, const char* control_prefix) {
  switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20 || c == 0x7f) {
        out += control_prefix;
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
      } else {
        out += static_cast<char>(c);
      }
  }
}

void append_json_member(std::string& out, const char* key, std::string_view value) {
  out += ",\"";
  out += key;
  out += "\":";
  if (value.empty()) {
    out += "null";
  } else {
    append_json_string(out, value);
  }
}

void append_text_field(std::string& out, const char* key, std::string_view value) {
  out += ' ';
  out += key;
  out += '=';
  if (value.empty()) {
    out += '-';
  } else {
    append_text_value(out, value);
  }
}

}  // namespace

void set_level(LogLevel level) {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

bool enabled(LogLevel level) {
  return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed);
}

void set_format(LogFormat format) {
  g_format.store(static_cast<int>(format), std::memory_order_relaxed);
}

void set_access_log(bool on) {
  g_access.store(on, std::memory_order_relaxed);
}

bool access_enabled() {
  return g_access.load(std::memory_order_relaxed) && enabled(LogLevel::info);
}

bool detect_journal() {
  // systemd.exec(5): "DEVICE:INODE" of the stream, in decimal. Compare with stderr itself:
  // a wrapper may have redirected stderr while the variable was inherited.
  bool journal = false;
  const char* env = getenv("JOURNAL_STREAM");
  if (env && *env) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long dev = strtoull(env, &end, 10);
    if (errno == 0 && end != env && *end == ':') {
      const char* ino_text = end + 1;
      const unsigned long long ino = strtoull(ino_text, &end, 10);
      struct stat st {};
      journal = errno == 0 && end != ino_text && *end == '\0' && fstat(STDERR_FILENO, &st) == 0 &&
                static_cast<unsigned long long>(st.st_dev) == dev &&
                static_cast<unsigned long long>(st.st_ino) == ino;
    }
  }
  g_journal.store(journal, std::memory_order_relaxed);
  return journal;
}

void set_thread_worker(int worker_id) {
  t_worker = worker_id;
}

void write(LogLevel level, uint64_t conn, const char* fmt, ...) {
  const int saved_errno = errno;  // callers may log between a failing call and reading errno
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  const int w = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const size_t len = w < 0 ? 0 : std::min(static_cast<size_t>(w), sizeof msg - 1);

  std::string& line = t_line;
  const bool as_json = json();
  begin_line(line, level, conn, as_json);
  if (as_json) {
    line += ",\"msg\":";
    append_json_string(line, std::string_view(msg, len));
    line += '}';
  } else {
    line.append(msg, len);
  }
  emit(line);
  errno = saved_errno;
}

void access(const AccessRecord& r) {
  if (!access_enabled()) return;
  const int saved_errno = errno;
  std::string& line = t_line;
  if (json()) {
    begin_line(line, LogLevel::info, r.conn, true);
    line += ",\"type\":\"access\"";
    append_json_member(line, "service", r.service);
    append_json_member(line, "client_addr", r.client_addr);
    line += ",\"client_port\":";
    append_uint(line, r.client_port);
    append_json_member(line, "version", r.version);
    append_json_member(line, "cipher", r.cipher);
    append_json_member(line, "sni", r.sni);
    append_json_member(line, "alpn", r.alpn);
    line += ",\"resumed\":";
    line += r.resumed ? "true" : "false";
    append_json_member(line, "client_cert", r.client_cert);
    append_json_member(line, "backend", r.backend);
    line += ",\"to_backend\":";
    append_uint(line, r.to_backend);
    line += ",\"to_client\":";
    append_uint(line, r.to_client);
    line += ",\"handshake_s\":";
    if (r.handshake_s < 0) {
      line += "null";
    } else {
      append_seconds(line, r.handshake_s, 6);
    }
    line += ",\"duration_s\":";
    append_seconds(line, r.duration_s, 6);
    append_json_member(line, "end", r.end);
    line += '}';
  } else {
    begin_line(line, LogLevel::info, r.conn, false);
    line += "access";
    append_text_field(line, "service", r.service);
    // "client=127.0.0.1:41234", "client=[::1]:41234", "client=unix:/run/ferry.sock"
    std::string client;
    if (r.client_addr.starts_with("unix:")) {
      client = r.client_addr;
    } else {
      const bool v6 = r.client_addr.find(':') != std::string_view::npos;
      if (v6) client += '[';
      client += r.client_addr;
      if (v6) client += ']';
      client += ':';
      append_uint(client, r.client_port);
    }
    append_text_field(line, "client", r.client_addr.empty() ? std::string_view() : client);
    append_text_field(line, "version", r.version);
    append_text_field(line, "cipher", r.cipher);
    append_text_field(line, "sni", r.sni);
    append_text_field(line, "alpn", r.alpn);
    append_text_field(line, "resumed", r.resumed ? "yes" : "no");
    append_text_field(line, "client_cert", r.client_cert);
    append_text_field(line, "backend", r.backend);
    line += " to_backend=";
    append_uint(line, r.to_backend);
    line += " to_client=";
    append_uint(line, r.to_client);
    line += " handshake=";
    if (r.handshake_s < 0) {
      line += '-';
    } else {
      append_seconds(line, r.handshake_s, 3);
      line += 's';
    }
    line += " duration=";
    append_seconds(line, r.duration_s, 3);
    line += 's';
    append_text_field(line, "end", r.end);
  }
  emit(line);
  errno = saved_errno;
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = utf8_sequence(s, i);
      if (n == 0) {
        out += "\\ufffd";  // one replacement character per invalid byte
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    if (c == '\b') {
      out += "\\b";
    } else if (c == '\f') {
      out += "\\f";
    } else {
      append_escaped(out, c, "\\u00");
    }
    ++i;
  }
  out += '"';
}

void append_text_value(std::string& out, std::string_view s) {
  bool quote = s.empty();
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7f || c == '"' || c == '\\' || c == '=') {
      quote = true;
      break;
    }
  }
  if (!quote) {
    out += s;
    return;
  }
  out += '"';
  for (const char ch : s) {
    append_escaped(out, static_cast<unsigned char>(ch), "\\x");
  }
  out += '"';
}

}  // namespace ferry::log
