#pragma once
// Dropping root after start-up: `[global] user` / `group`. main() binds every listener and reads
// every key as the user it was started as, then calls drop_privileges() once, before serving.

#include <vector>

#include "config/config.h"

namespace ferry {

// Looks up `[global] user` and `group` (without changing anything), so `ferry --check` reports
// an unknown user or group like start-up does. True when there is nothing to report.
bool check_user_exists(const Config& config, std::vector<ConfigError>& errors);

// With `user` set: setgroups() to the one target group, setgid(), setuid(), then verifies that
// every id changed and that root cannot be regained. `group` defaults to the user's primary
// group. Without `user` the ids stay as they are. In every case the process is made
// non-dumpable afterwards (no core dumps, no ptrace by other processes of the same user), so
// private keys in memory cannot be read that way. Appends to `errors` and returns false on any
// failure; the caller must then exit without serving.
bool drop_privileges(const Config& config, std::vector<ConfigError>& errors);

// [global] max_open_files: set RLIMIT_NOFILE (soft and hard) before anything is opened. Raising
// the hard limit needs root (or CAP_SYS_RESOURCE); without it, a value above the hard limit is an
// error naming that limit.
bool apply_open_files_limit(const Config& config, std::vector<ConfigError>& errors);

}  // namespace ferry
