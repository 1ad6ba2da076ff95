#include "core/log.h"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <regex>
#include <string>

namespace ferry {
namespace {

using namespace std::string_literals;

// Catches what is written to fd 2 between construction and text(): a pipe dup2'ed onto it.
class StderrCapture {
 public:
  StderrCapture() {
    REQUIRE(pipe2(fds_, O_CLOEXEC) == 0);
    saved_ = dup(STDERR_FILENO);
    REQUIRE(saved_ >= 0);
    REQUIRE(dup2(fds_[1], STDERR_FILENO) == STDERR_FILENO);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  ~StderrCapture() { restore(); }

  // "DEV:INO" of the pipe, as systemd would put it in JOURNAL_STREAM.
  std::string journal_stream() const {
    struct stat st {};
    REQUIRE(fstat(fds_[1], &st) == 0);
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  }

  // Restores stderr and returns everything written (a pipe holds 64 KiB: plenty here).
  std::string text() {
    restore();
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds_[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::close(fds_[1]);  // the read end now sees EOF after the captured bytes
    saved_ = -1;
  }

  int fds_[2] = {-1, -1};
  int saved_ = -1;
};

// Puts the logger back to its defaults whatever a test changed.
struct LogDefaults {
  ~LogDefaults() {
    unsetenv("JOURNAL_STREAM");
    log::detect_journal();
    log::set_format(LogFormat::text);
    log::set_level(LogLevel::info);
    log::set_access_log(true);
    log::set_thread_worker(-1);
  }
};

std::string json_string(std::string_view s) {
  std::string out;
  log::append_json_string(out, s);
  return out;
}

std::string text_value(std::string_view s) {
  std::string out;
  log::append_text_value(out, s);
  return out;
}

// A finished TLS 1.3 connection with every field set.
log::AccessRecord full_record() {
  log::AccessRecord r;
  r.conn = 12;
  r.service = "web";
  r.client_addr = "127.0.0.1";
  r.client_port = 41234;
  r.sni = "localhost";
  r.alpn = "h2";
  r.version = "TLSv1.3";
  r.cipher = "TLS_AES_128_GCM_SHA256";
  r.resumed = true;
  r.client_cert = "CN=John Doe,O=Acme\\, Inc.";
  r.backend = "127.0.0.1:8080";
  r.to_backend = 123;
  r.to_client = 456;
  r.handshake_s = 0.0042;
  r.duration_s = 1.5;
  r.end = "done";
  return r;
}

// A handshake that failed: nothing negotiated.
log::AccessRecord failed_record() {
  log::AccessRecord r;
  r.conn = 13;
  r.service = "web";
  r.client_addr = "::1";
  r.client_port = 5000;
  r.backend = "127.0.0.1:8080";
  r.duration_s = 0.25;
  r.end = "handshake_failed";
  return r;
}

const std::regex kTimestamp(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");

}  // namespace

TEST_CASE("JSON strings escape quotes, backslashes, control characters and bad UTF-8") {
  struct Row {
    std::string in;
    std::string out;
  };
  const Row rows[] = {
      {"", R"("")"},
      {"plain text", R"("plain text")"},
      {"say \"hi\"", R"("say \"hi\"")"},
      {"C:\\dir\\", R"("C:\\dir\\")"},
      {"a\nb\rc\td\be\ff", R"("a\nb\rc\td\be\ff")"},
      {"\x01\x1f", R"("\u0001\u001f")"},
      {"nul\0byte"s, R"("nul\u0000byte")"},
      {"del\x7f", R"("del\u007f")"},
      {"/slash/ is fine", R"("/slash/ is fine")"},
      // Valid UTF-8 passes through as is.
      {"caf\xc3\xa9", "\"caf\xc3\xa9\""},
      {"\xe2\x82\xac 5", "\"\xe2\x82\xac 5\""},
      {"\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\""},
      {"\xef\xbf\xbf", "\"\xef\xbf\xbf\""},          // U+FFFF
      {"\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\""},  // U+10FFFF
      // Invalid UTF-8: one U+FFFD per byte that starts no valid sequence.
      {"\xff", R"("\ufffd")"},
      {"a\x80z", R"("a\ufffdz")"},
      {"\xe2\x82", R"("\ufffd\ufffd")"},                      // truncated at the end
      {"\xe2\x82x", R"("\ufffd\ufffdx")"},                    // truncated in the middle
      {"\xc0\xaf", R"("\ufffd\ufffd")"},                      // overlong '/'
      {"\xe0\x80\xaf", R"("\ufffd\ufffd\ufffd")"},            // overlong, 3 bytes
      {"\xed\xa0\x80", R"("\ufffd\ufffd\ufffd")"},            // UTF-16 surrogate
      {"\xf4\x90\x80\x80", R"("\ufffd\ufffd\ufffd\ufffd")"},  // above U+10FFFF
      {"\xf8\x88\x80\x80\x80", R"("\ufffd\ufffd\ufffd\ufffd\ufffd")"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.in);
    CHECK(json_string(row.in) == row.out);
  }
}

TEST_CASE("text values are quoted only when they need it") {
  struct Row {
    std::string in;
    std::string out;
  };
  const Row rows[] = {
      {"web", "web"},
      {"127.0.0.1:41234", "127.0.0.1:41234"},
      {"TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"},
      {"CN=x", R"("CN=x")"},
      {"", R"("")"},
      {"two words", R"("two words")"},
      {"say \"hi\"", R"("say \"hi\"")"},
      {"back\\slash", R"("back\\slash")"},
      {"line\nbreak\ttab\rcr", R"("line\nbreak\ttab\rcr")"},
      {"\x01"s + "\0"s, R"("\x01\x00")"},
      {"del\x7f", R"("del\x7f")"},
      {"caf\xc3\xa9", "caf\xc3\xa9"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.in);
    CHECK(text_value(row.in) == row.out);
  }
}

TEST_CASE("text lines: timestamp, level, [wN cM], message, one line each") {
  LogDefaults restore;
  StderrCapture cap;
  log::write(LogLevel::info, 0, "hello %d", 42);
  log::set_thread_worker(3);
  log::write(LogLevel::warn, 7, "conn line");
  log::write(LogLevel::error, 0, "worker line");
  const std::string out = cap.text();
  const std::regex rx(R"((\S+) info hello 42\n(\S+) warn \[w3 c7\] conn line\n)"
                      R"((\S+) error \[w3\] worker line\n)");
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_match(out, m, rx), out);
  for (int i = 1; i <= 3; ++i) CHECK(std::regex_match(m[i].str(), kTimestamp));
}

TEST_CASE("JSON lines: one object per line with time, level, worker, conn and msg") {
  LogDefaults restore;
  log::set_format(LogFormat::json);
  StderrCapture cap;
  log::write(LogLevel::info, 0, "ready: %s", "1 \"service\"\n\\");
  log::set_thread_worker(0);
  log::write(LogLevel::warn, 12, "bad byte \xff");
  const std::string out = cap.text();
  const std::regex rx(R"x([{]"time":"(\S+?)","level":"info",)x"
                      R"x("msg":"ready: 1 \\"service\\"\\n\\\\"[}]\n)x"
                      R"x([{]"time":"(\S+?)","level":"warn","worker":0,"conn":12,)x"
                      R"x("msg":"bad byte \\ufffd"[}]\n)x");
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_match(out, m, rx), out);
  CHECK(std::regex_match(m[1].str(), kTimestamp));
  CHECK(std::regex_match(m[2].str(), kTimestamp));
}

TEST_CASE("journal mode: sd-daemon priority prefix, no timestamp") {
  LogDefaults restore;
  log::set_level(LogLevel::debug);
  StderrCapture cap;
  REQUIRE(setenv("JOURNAL_STREAM", cap.journal_stream().c_str(), 1) == 0);
  REQUIRE(log::detect_journal());
  log::write(LogLevel::error, 0, "e");
  log::write(LogLevel::warn, 0, "w");
  log::write(LogLevel::info, 0, "i");
  log::write(LogLevel::debug, 0, "d");
  log::set_thread_worker(1);
  log::set_format(LogFormat::json);
  log::write(LogLevel::info, 5, "j");
  log::set_format(LogFormat::text);
  log::access(failed_record());
  CHECK(cap.text() ==
        "<3>error e\n"
        "<4>warn w\n"
        "<6>info i\n"
        "<7>debug d\n"
        "<6>{\"level\":\"info\",\"worker\":1,\"conn\":5,\"msg\":\"j\"}\n"
        "<6>info [w1 c13] access service=web client=[::1]:5000 version=- cipher=- sni=- alpn=- "
        "resumed=no client_cert=- backend=127.0.0.1:8080 to_backend=0 to_client=0 handshake=- "
        "duration=0.250s end=handshake_failed\n");
}

TEST_CASE("journal mode needs JOURNAL_STREAM to name stderr itself") {
  LogDefaults restore;
  StderrCapture cap;
  const std::string real = cap.journal_stream();
  for (const std::string& value : {""s, "1:2"s, "garbage"s, real + "x"s, ":"s, real + ":1"s}) {
    CAPTURE(value);
    REQUIRE(setenv("JOURNAL_STREAM", value.c_str(), 1) == 0);
    CHECK_FALSE(log::detect_journal());
  }
  unsetenv("JOURNAL_STREAM");
  CHECK_FALSE(log::detect_journal());
  log::write(LogLevel::info, 0, "not journal");
  const std::string out = cap.text();
  CHECK_MESSAGE(std::regex_match(out, std::regex(R"(\S+Z info not journal\n)")), out);
}

TEST_CASE("access lines in text: every field, key=value, unknowns as -") {
  LogDefaults restore;
  log::set_thread_worker(0);
  StderrCapture cap;
  log::access(full_record());
  log::access(failed_record());
  const std::string out = cap.text();
  const std::regex rx(
      R"x((\S+) info \[w0 c12\] access service=web client=127\.0\.0\.1:41234 version=TLSv1\.3 )x"
      R"x(cipher=TLS_AES_128_GCM_SHA256 sni=localhost alpn=h2 resumed=yes )x"
      R"x(client_cert="CN=John Doe,O=Acme\\\\, Inc\." backend=127\.0\.0\.1:8080 to_backend=123 )x"
      R"x(to_client=456 handshake=0\.004s duration=1\.500s end=done\n)x"
      R"x((\S+) info \[w0 c13\] access service=web client=\[::1\]:5000 version=- cipher=- sni=- )x"
      R"x(alpn=- resumed=no client_cert=- backend=127\.0\.0\.1:8080 to_backend=0 to_client=0 )x"
      R"x(handshake=- duration=0\.250s end=handshake_failed\n)x");
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_match(out, m, rx), out);
  CHECK(std::regex_match(m[1].str(), kTimestamp));
}

TEST_CASE("access lines in JSON: typed fields, null for unknowns") {
  LogDefaults restore;
  log::set_format(LogFormat::json);
  log::set_thread_worker(2);
  StderrCapture cap;
  log::access(full_record());
  log::access(failed_record());
  const std::string out = cap.text();
  const std::regex rx(
      R"x([{]"time":"(\S+?)","level":"info","worker":2,"conn":12,"type":"access","service":"web",)x"
      R"x("client_addr":"127\.0\.0\.1","client_port":41234,"version":"TLSv1\.3",)x"
      R"x("cipher":"TLS_AES_128_GCM_SHA256","sni":"localhost","alpn":"h2","resumed":true,)x"
      R"x("client_cert":"CN=John Doe,O=Acme\\\\, Inc\.","backend":"127\.0\.0\.1:8080",)x"
      R"x("to_backend":123,"to_client":456,"handshake_s":0\.004200,"duration_s":1\.500000,)x"
      R"x("end":"done"[}]\n)x"
      R"x([{]"time":"\S+?","level":"info","worker":2,"conn":13,"type":"access","service":"web",)x"
      R"x("client_addr":"::1","client_port":5000,"version":null,"cipher":null,"sni":null,)x"
      R"x("alpn":null,"resumed":false,"client_cert":null,"backend":"127\.0\.0\.1:8080",)x"
      R"x("to_backend":0,"to_client":0,"handshake_s":null,"duration_s":0\.250000,)x"
      R"x("end":"handshake_failed"[}]\n)x");
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_match(out, m, rx), out);
  CHECK(std::regex_match(m[1].str(), kTimestamp));
}

TEST_CASE("access lines are off with access_log = false or below info") {
  LogDefaults restore;
  StderrCapture cap;
  log::set_access_log(false);
  CHECK_FALSE(log::access_enabled());
  log::access(full_record());
  log::set_access_log(true);
  log::set_level(LogLevel::warn);
  CHECK_FALSE(log::access_enabled());
  log::access(full_record());
  log::set_level(LogLevel::info);
  CHECK(log::access_enabled());
  log::write(LogLevel::info, 0, "only this");
  const std::string out = cap.text();
  CHECK_MESSAGE(std::regex_match(out, std::regex(R"(\S+Z info only this\n)")), out);
}

TEST_CASE("logging keeps errno") {
  LogDefaults restore;
  StderrCapture cap;
  errno = ECONNRESET;
  log::write(LogLevel::info, 0, "x");
  CHECK(errno == ECONNRESET);
  log::access(failed_record());
  CHECK(errno == ECONNRESET);
  (void)cap.text();
}

}  // namespace ferry
