#include "core/systemd.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/log.h"

namespace ferry::systemd {
namespace {

// Sends one notification. sd_notify() returns 0 without NOTIFY_SOCKET (not under systemd), so
// this is a no-op then. A failure is logged once: the watchdog calls this every few seconds and a
// broken notify socket must not flood the log.
void send(const std::string& state) {
  static std::atomic<bool> warned{false};
  int r = sd_notify(0, state.c_str());
  if (r < 0 && !warned.exchange(true)) {
    LOG_WARN("systemd: sd_notify failed: %s (further failures are not logged)", strerror(-r));
  }
}

uint64_t monotonic_usec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// STATUS= is one line: a newline would start a new assignment.
std::string one_line(const std::string& text) {
  std::string s = text;
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

struct Inherited {
  std::map<std::string, int> by_name;            // first socket of each name
  std::vector<std::pair<std::string, int>> all;  // every usable socket, in fd order
};

Inherited take_inherited() {
  Inherited out;
  char** names = nullptr;
  // unset_environment = 1: LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES are for this process only.
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) {
    LOG_WARN("systemd: cannot take inherited sockets: %s", strerror(-n));
    return out;
  }
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    std::string name = (names && names[i]) ? names[i] : "unknown";
    int r = sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1);
    if (r <= 0) {
      LOG_WARN("systemd: inherited fd %d (%s) is not a listening stream socket; ignored", fd,
               name.c_str());
      continue;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      LOG_WARN("systemd: inherited fd %d (%s): fcntl: %s; ignored", fd, name.c_str(),
               strerror(errno));
      continue;
    }
    out.all.emplace_back(name, fd);
    auto [it, inserted] = out.by_name.emplace(name, fd);
    if (!inserted) {
      LOG_WARN(
          "systemd: inherited fds %d and %d are both named \"%s\"; \"systemd:%s\" uses fd %d "
          "(give each socket its own FileDescriptorName=)",
          it->second, fd, name.c_str(), name.c_str(), it->second);
    }
  }
  if (names) {
    for (int i = 0; i < n; ++i) free(names[i]);
    free(names);
  }
  return out;
}

const Inherited& inherited() {
  static const Inherited sockets = take_inherited();  // thread-safe, computed once
  return sockets;
}

}  // namespace

void notify_ready() {
  send("READY=1\nSTATUS=ready");
}

void notify_reloading() {
  send("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
}

void notify_stopping() {
  send("STOPPING=1\nSTATUS=stopping");
}

void notify_status(const std::string& text) {
  send("STATUS=" + one_line(text));
}

uint64_t watchdog_usec() {
  uint64_t usec = 0;
  // Checks WATCHDOG_PID against our pid; 0 when WATCHDOG_USEC is unset or not for us.
  if (sd_watchdog_enabled(0, &usec) <= 0) return 0;
  return usec;
}

void notify_watchdog() {
  send("WATCHDOG=1");
}

const std::map<std::string, int>& inherited_sockets() {
  return inherited().by_name;
}

const std::vector<std::pair<std::string, int>>& inherited_socket_list() {
  return inherited().all;
}

}  // namespace ferry::systemd
