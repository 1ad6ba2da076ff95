// systemd integration: notifications checked on a fake NOTIFY_SOCKET (a Unix datagram socket
// this test reads), the watchdog interval from WATCHDOG_USEC/WATCHDOG_PID, and socket
// activation with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set in-process.

#include "core/systemd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace ferry;

// A datagram socket bound in a fresh temp dir and exported as NOTIFY_SOCKET while it lives.
class FakeNotifySocket {
 public:
  FakeNotifySocket() {
    char tmpl[] = "/tmp/ferry-sd-test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path_.size() < sizeof a.sun_path);
    memcpy(a.sun_path, path_.c_str(), path_.size() + 1);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{2, 0};  // a missing datagram fails the test instead of hanging it
    REQUIRE(setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~FakeNotifySocket() {
    unsetenv("NOTIFY_SOCKET");
    close(fd_);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  FakeNotifySocket(const FakeNotifySocket&) = delete;
  FakeNotifySocket& operator=(const FakeNotifySocket&) = delete;

  // The next datagram, or "" after 2 s without one.
  std::string receive() {
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
  // True when no datagram is waiting.
  bool empty() {
    char c;
    return recv(fd_, &c, 1, MSG_DONTWAIT | MSG_PEEK) < 0;
  }

 private:
  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

uint64_t now_monotonic_usec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    if (nl == std::string::npos) nl = s.size();
    if (nl > start) out.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

TEST_CASE("systemd: without NOTIFY_SOCKET every notification is a silent no-op") {
  unsetenv("NOTIFY_SOCKET");
  systemd::notify_ready();
  systemd::notify_reloading();
  systemd::notify_status("idle");
  systemd::notify_watchdog();
  systemd::notify_stopping();
}

TEST_CASE("systemd: READY=1 with a status") {
  FakeNotifySocket sock;
  systemd::notify_ready();
  auto lines = split_lines(sock.receive());
  REQUIRE(!lines.empty());
  CHECK(lines[0] == "READY=1");
  CHECK(lines.size() == 2);
  CHECK(lines.back().starts_with("STATUS="));
  CHECK(sock.empty());
}

TEST_CASE("systemd: RELOADING=1 carries MONOTONIC_USEC of now") {
  FakeNotifySocket sock;
  uint64_t before = now_monotonic_usec();
  systemd::notify_reloading();
  uint64_t after = now_monotonic_usec();
  auto lines = split_lines(sock.receive());
  REQUIRE(!lines.empty());
  CHECK(lines[0] == "RELOADING=1");
  std::string mono;
  for (const auto& l : lines) {
    if (l.starts_with("MONOTONIC_USEC=")) mono = l.substr(15);
  }
  REQUIRE(!mono.empty());
  uint64_t usec = std::stoull(mono);
  CHECK(usec >= before);
  CHECK(usec <= after);
}

TEST_CASE("systemd: STOPPING=1") {
  FakeNotifySocket sock;
  systemd::notify_stopping();
  auto lines = split_lines(sock.receive());
  REQUIRE(!lines.empty());
  CHECK(lines[0] == "STOPPING=1");
}

TEST_CASE("systemd: STATUS= is sent as one line") {
  FakeNotifySocket sock;
  systemd::notify_status("3 active connections");
  CHECK(sock.receive() == "STATUS=3 active connections");
  systemd::notify_status("two\nlines");
  CHECK(sock.receive() == "STATUS=two lines");
}

TEST_CASE("systemd: WATCHDOG=1") {
  FakeNotifySocket sock;
  systemd::notify_watchdog();
  CHECK(sock.receive() == "WATCHDOG=1");
}

TEST_CASE("systemd: watchdog_usec follows WATCHDOG_USEC for this pid only") {
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  CHECK(systemd::watchdog_usec() == 0);

  setenv("WATCHDOG_USEC", "30000000", 1);
  CHECK(systemd::watchdog_usec() == 30000000);  // no WATCHDOG_PID: meant for us

  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  CHECK(systemd::watchdog_usec() == 30000000);
  CHECK(getenv("WATCHDOG_USEC") != nullptr);  // left in place: asked again on reload

  setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1);
  CHECK(systemd::watchdog_usec() == 0);  // another process's watchdog

  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
}

int listening_socket(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);  // blocking, no CLOEXEC: as systemd passes it
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(listen(fd, 16) == 0);
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

// Moves `fd` to `target` (saving whatever was open there into `saved`).
void place_at(int fd, int target, std::vector<std::pair<int, int>>& saved) {
  // socket() returns the lowest free fd, which may be `target` itself or a later target:
  // park it high first.
  int parked = fcntl(fd, F_DUPFD, 200);
  REQUIRE(parked >= 0);
  close(fd);
  fd = parked;
  if (fcntl(target, F_GETFD) >= 0) {
    int keep = fcntl(target, F_DUPFD_CLOEXEC, 100);
    REQUIRE(keep >= 0);
    saved.emplace_back(target, keep);
  } else {
    saved.emplace_back(target, -1);
  }
  REQUIRE(dup2(fd, target) == target);
  close(fd);
}

// The inherited sockets are taken once per process and cached, so this is one test case.
TEST_CASE("systemd: inherited sockets by FileDescriptorName") {
  std::vector<std::pair<int, int>> saved;
  uint16_t web_port = 0, dup_port = 0, admin_port = 0;
  place_at(listening_socket(&web_port), 3, saved);
  int udp = socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(udp >= 0);
  place_at(udp, 4, saved);                          // not a listening stream socket: skipped
  place_at(listening_socket(&dup_port), 5, saved);  // a second "web": only in the list
  place_at(listening_socket(&admin_port), 6, saved);

  setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
  setenv("LISTEN_FDS", "4", 1);
  setenv("LISTEN_FDNAMES", "web:udp:web:admin", 1);

  const auto& sockets = systemd::inherited_sockets();
  CHECK(sockets.size() == 2);
  CHECK(sockets.count("web") == 1);
  CHECK(sockets.count("admin") == 1);
  CHECK(sockets.count("udp") == 0);
  if (sockets.count("web")) CHECK(sockets.at("web") == 3);
  if (sockets.count("admin")) CHECK(sockets.at("admin") == 6);

  const auto& list = systemd::inherited_socket_list();
  REQUIRE(list.size() == 3);
  CHECK(list[0] == std::pair<std::string, int>("web", 3));
  CHECK(list[1] == std::pair<std::string, int>("web", 5));
  CHECK(list[2] == std::pair<std::string, int>("admin", 6));

  // The variables are for this process only: unset once taken.
  CHECK(getenv("LISTEN_PID") == nullptr);
  CHECK(getenv("LISTEN_FDS") == nullptr);
  CHECK(getenv("LISTEN_FDNAMES") == nullptr);

  for (const auto& [name, fd] : list) {
    CAPTURE(fd);
    CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  }

  // Non-blocking: nothing pending gives EAGAIN; a client connection is then accepted.
  CHECK(accept4(3, nullptr, nullptr, SOCK_CLOEXEC) < 0);
  CHECK(errno == EAGAIN);
  int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(client >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(web_port);
  REQUIRE(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  int accepted = -1;
  for (int i = 0; i < 200 && accepted < 0; ++i) {
    accepted = accept4(3, nullptr, nullptr, SOCK_CLOEXEC);
    if (accepted < 0) usleep(5000);
  }
  CHECK(accepted >= 0);
  if (accepted >= 0) close(accepted);
  close(client);

  // Computed once: a second call returns the same map even with the variables gone.
  CHECK(&systemd::inherited_sockets() == &sockets);
  CHECK(systemd::inherited_sockets().size() == 2);

  for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
    close(it->first);
    if (it->second >= 0) {
      dup2(it->second, it->first);
      close(it->second);
    }
  }
}

}  // namespace
