#pragma once
// systemd integration through libsystemd: readiness/reload/stop notifications, status, watchdog
// and socket activation. Every function is a no-op when not started by systemd (no
// NOTIFY_SOCKET / LISTEN_FDS), so callers never check.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ferry::systemd {

void notify_ready();                          // READY=1 (+ STATUS=)
void notify_reloading();                      // RELOADING=1 + MONOTONIC_USEC=<now>
void notify_stopping();                       // STOPPING=1
void notify_status(const std::string& text);  // STATUS=<text>

// WATCHDOG_USEC for this process, or 0 when the watchdog is off.
uint64_t watchdog_usec();
void notify_watchdog();  // WATCHDOG=1

// Sockets passed by socket activation, by FileDescriptorName= (sd_listen_fds_with_names).
// Taken once at start-up; the environment variables are unset afterwards. The fds are
// non-blocking and close-on-exec.
const std::map<std::string, int>& inherited_sockets();

// Every usable inherited socket as (name, fd), in fd order, duplicates of a name included
// (inherited_sockets() keeps the first fd of each name and logs a warning for the others).
const std::vector<std::pair<std::string, int>>& inherited_socket_list();

}  // namespace ferry::systemd
