#include "daemon/privileges.h"

#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "core/log.h"

namespace ferry {
namespace {

constexpr size_t kMaxLookupBuffer = 1 << 20;

// One passwd or group lookup by name.
struct Lookup {
  bool found = false;
  unsigned id = 0;        // uid or gid
  gid_t primary_gid = 0;  // users only
  std::string error;      // set when the lookup itself failed, as opposed to "no such name"
};

// The ids to switch to.
struct Target {
  uid_t uid = 0;
  gid_t gid = 0;
};

std::string quoted(const std::string& s) {
  return "\"" + s + "\"";
}

// getpwnam_r(3) and getgrnam_r(3) report "not found" as 0 or, depending on the NSS module, as
// one of these.
bool means_not_found(int err) {
  return err == 0 || err == ENOENT || err == ESRCH || err == EBADF || err == EPERM;
}

std::vector<char> lookup_buffer(int sysconf_name) {
  const long n = sysconf(sysconf_name);
  return std::vector<char>(n > 0 ? static_cast<size_t>(n) : 16384);
}

Lookup lookup_user(const std::string& name) {
  Lookup out;
  std::vector<char> buf = lookup_buffer(_SC_GETPW_R_SIZE_MAX);
  for (;;) {
    passwd entry{};
    passwd* result = nullptr;
    const int err = getpwnam_r(name.c_str(), &entry, buf.data(), buf.size(), &result);
    if (err == ERANGE && buf.size() < kMaxLookupBuffer) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (result != nullptr) {
      out.found = true;
      out.id = entry.pw_uid;
      out.primary_gid = entry.pw_gid;
    } else if (!means_not_found(err)) {
      out.error = std::strerror(err);
    }
    return out;
  }
}

Lookup lookup_group(const std::string& name) {
  Lookup out;
  std::vector<char> buf = lookup_buffer(_SC_GETGR_R_SIZE_MAX);
  for (;;) {
    group entry{};
    group* result = nullptr;
    const int err = getgrnam_r(name.c_str(), &entry, buf.data(), buf.size(), &result);
    if (err == ERANGE && buf.size() < kMaxLookupBuffer) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (result != nullptr) {
      out.found = true;
      out.id = entry.gr_gid;
    } else if (!means_not_found(err)) {
      out.error = std::strerror(err);
    }
    return out;
  }
}

// Resolves `user` / `group` to ids, reporting every problem. Only called when one is set.
std::optional<Target> resolve_target(const Config& config, std::vector<ConfigError>& errors) {
  const size_t errors_at_start = errors.size();
  Target target;
  if (config.user.empty()) {
    errors.push_back({config.group_pos, "global.group", "needs global.user as well"});
  } else {
    const Lookup user = lookup_user(config.user);
    if (!user.error.empty()) {
      errors.push_back({config.user_pos, "global.user",
                        "cannot look up user " + quoted(config.user) + ": " + user.error});
    } else if (!user.found) {
      errors.push_back({config.user_pos, "global.user", "no such user " + quoted(config.user)});
    }
    target.uid = user.id;
    target.gid = user.primary_gid;
  }
  if (!config.group.empty()) {
    const Lookup group = lookup_group(config.group);
    if (!group.error.empty()) {
      errors.push_back({config.group_pos, "global.group",
                        "cannot look up group " + quoted(config.group) + ": " + group.error});
    } else if (!group.found) {
      errors.push_back({config.group_pos, "global.group", "no such group " + quoted(config.group)});
    }
    target.gid = group.id;
  }
  if (errors.size() != errors_at_start) return std::nullopt;
  return target;
}

std::string errno_text() {
  return std::strerror(errno);
}

// setgroups + setgid + setuid, then checks that nothing of the old identity is left.
bool switch_to(const Target& target, const Config& config, std::vector<ConfigError>& errors) {
  auto fail = [&](std::string message) {
    errors.push_back({config.user_pos, "global.user", std::move(message)});
    return false;
  };
  const std::string who = quoted(config.user);

  uid_t ruid = 0, euid = 0, suid = 0;
  gid_t rgid = 0, egid = 0, sgid = 0;
  auto ids_are_target = [&] {
    return getresuid(&ruid, &euid, &suid) == 0 && getresgid(&rgid, &egid, &sgid) == 0 &&
           ruid == target.uid && euid == target.uid && suid == target.uid && rgid == target.gid &&
           egid == target.gid && sgid == target.gid;
  };

  if (geteuid() != 0) {
    // Already running as exactly that user and group (e.g. started by systemd with User=):
    // nothing to change.
    if (ids_are_target()) return true;
    return fail("cannot switch to user " + who + ": ferry runs as uid " +
                std::to_string(geteuid()) + ", not as root");
  }

  // Order matters: the supplementary groups and the gid can only be changed while still root.
  if (setgroups(1, &target.gid) != 0) return fail("setgroups: " + errno_text());
  if (setgid(target.gid) != 0) {
    return fail("setgid(" + std::to_string(target.gid) + "): " + errno_text());
  }
  if (setuid(target.uid) != 0) {
    return fail("setuid(" + std::to_string(target.uid) + "): " + errno_text());
  }

  if (!ids_are_target()) {
    return fail("switching to user " + who + " left uids " + std::to_string(ruid) + "/" +
                std::to_string(euid) + "/" + std::to_string(suid) + " and gids " +
                std::to_string(rgid) + "/" + std::to_string(egid) + "/" + std::to_string(sgid));
  }
  gid_t groups[2] = {};
  const int n_groups = getgroups(2, groups);
  if (n_groups != 1 || groups[0] != target.gid) {
    return fail("switching to user " + who + " left other supplementary groups");
  }
  if (target.uid != 0 && setuid(0) != -1) {
    return fail("switching to user " + who + " did not take effect: root could be regained");
  }
  LOG_INFO("running as user %s (uid %u, gid %u)", config.user.c_str(),
           static_cast<unsigned>(target.uid), static_cast<unsigned>(target.gid));
  return true;
}

}  // namespace

bool check_user_exists(const Config& config, std::vector<ConfigError>& errors) {
  if (config.user.empty() && config.group.empty()) return true;
  return resolve_target(config, errors).has_value();
}

bool drop_privileges(const Config& config, std::vector<ConfigError>& errors) {
  if (!config.user.empty() || !config.group.empty()) {
    const std::optional<Target> target = resolve_target(config, errors);
    if (!target || !switch_to(*target, config, errors)) return false;
  }
  // After the switch: changing the uid resets the dumpable flag. Non-dumpable also makes
  // /proc/PID owned by root, so other processes of the service user cannot read our memory.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    ConfigError error;  // no key to point at: reported as "FILE: message"
    error.pos.file = config.path;
    error.message = "prctl(PR_SET_DUMPABLE, 0): " + errno_text();
    errors.push_back(std::move(error));
    return false;
  }
  return true;
}

bool apply_open_files_limit(const Config& config, std::vector<ConfigError>& errors) {
  if (config.max_open_files == 0) return true;
  const rlim_t want = static_cast<rlim_t>(config.max_open_files);
  rlimit now{};
  ::getrlimit(RLIMIT_NOFILE, &now);
  rlimit next{want, want};
  if (::setrlimit(RLIMIT_NOFILE, &next) == 0) {
    LOG_DEBUG("open files limit set to %llu", static_cast<unsigned long long>(want));
    return true;
  }
  const int err = errno;
  if (want <= now.rlim_max) {
    next = {want, now.rlim_max};  // lowering the hard limit is not needed: keep it
    if (::setrlimit(RLIMIT_NOFILE, &next) == 0) return true;
  }
  errors.push_back({config.max_open_files_pos, "global.max_open_files",
                    "cannot raise the open files limit to " + std::to_string(want) +
                        " (hard limit " + std::to_string(now.rlim_max) +
                        "): " + std::strerror(err) +
                        "; start ferry as root or raise LimitNOFILE= in its unit"});
  return false;
}

}  // namespace ferry
