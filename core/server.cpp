#include "core/server.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "core/listener.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/systemd.h"
#include "core/worker.h"

namespace ferry {
namespace {

constexpr uint64_t kStatusIntervalMs = 5000;
constexpr uint64_t kWatchDebounceMs = 500;  // a half-written file is not loaded
constexpr uint64_t kWatchRetryMs = 2000;    // out of descriptors: look at the files again later

// Whether a file can be opened at all now. Out of descriptors (EMFILE/ENFILE), every file looks
// unreadable, which is not a change of the files.
bool descriptors_available() {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return true;
  }
  return errno != EMFILE && errno != ENFILE;
}

uv_handle_t* handle(auto* h) {
  return reinterpret_cast<uv_handle_t*>(h);
}

void close_fds(const std::vector<int>& fds) {
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
}

// The socket file of a Unix listener ferry created (key "unix:/path"), once nothing listens on it.
void unlink_unix_socket(const std::string& key) {
  if (!key.starts_with("unix:")) return;
  if (::unlink(key.c_str() + 5) != 0 && errno != ENOENT) {
    LOG_WARN("cannot remove %s: %s", key.c_str(), std::strerror(errno));
  }
}

}  // namespace

Server::Server(std::shared_ptr<const Runtime> runtime, Metrics& metrics)
    : runtime_(std::move(runtime)),
      metrics_(metrics),
      workers_count_(runtime_->config.effective_workers()) {
  uv_loop_init(&loop_);
}

Server::~Server() {
  for (auto& w : workers_) w->join();
  workers_.clear();
  // Sockets bound but never handed to workers (start-up failed after bind()).
  for (auto& [key, fds] : listeners_) close_fds(fds);
  uv_loop_close(&loop_);
}

bool Server::open_listeners(const ServiceRuntime& svc,
                            const std::map<std::string, ListenerFds>& current,
                            std::map<std::string, ListenerFds>& out, std::string& why) {
  const std::string key = svc.listen_key();
  if (auto it = current.find(key); it != current.end()) {
    out[key] = it->second;  // unchanged address: keep the bound socket, never rebind
    return true;
  }
  ListenerFds fds;
  if (!svc.config.accept_systemd.empty()) {
    // Socket activation: one inherited socket, watched by every worker through its own dup.
    const auto& inherited = systemd::inherited_sockets();
    auto it = inherited.find(svc.config.accept_systemd);
    if (it == inherited.end()) {
      why = "no socket named \"" + svc.config.accept_systemd +
            "\" was passed by systemd (FileDescriptorName= in the .socket unit)";
      return false;
    }
    for (unsigned w = 0; w < workers_count_; ++w) {
      const int fd = ::fcntl(it->second, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) {
        why = std::string("cannot duplicate the systemd socket: ") + std::strerror(errno);
        close_fds(fds);
        return false;
      }
      fds.push_back(fd);
    }
  } else if (svc.accept.is_unix()) {
    // No SO_REUSEPORT for Unix sockets: one socket, and a dup of it for each worker.
    const int fd = open_unix_listen_socket(svc.accept, svc.config.backlog, svc.config.unix_mode,
                                           svc.config.unix_owner, svc.config.unix_group, why);
    if (fd < 0) return false;
    fds.push_back(fd);
    for (unsigned w = 1; w < workers_count_; ++w) {
      const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) {
        why = std::string("cannot duplicate the socket: ") + std::strerror(errno);
        close_fds(fds);
        unlink_unix_socket(key);
        return false;
      }
      fds.push_back(dup);
    }
  } else {
    if (address_in_use(svc.accept, why)) return false;
    for (unsigned w = 0; w < workers_count_; ++w) {
      const int fd = open_listen_socket(svc.accept, svc.config.backlog, why);
      if (fd < 0) {
        close_fds(fds);
        return false;
      }
      fds.push_back(fd);
    }
  }
  out[key] = std::move(fds);
  return true;
}

bool Server::bind(std::vector<ConfigError>& errors) {
  std::map<std::string, ListenerFds> opened;
  for (const ServiceRuntime& svc : runtime_->services) {
    std::string why;
    if (!open_listeners(svc, {}, opened, why)) {
      errors.push_back(
          {svc.config.accept_pos, "service[" + std::to_string(svc.index) + "].accept", why});
    }
  }
  if (!errors.empty()) {
    for (auto& [key, fds] : opened) close_fds(fds);
    return false;
  }
  listeners_ = std::move(opened);
  for (const auto& [name, fd] : systemd::inherited_sockets()) {
    if (!listeners_.count("systemd:" + name)) {
      LOG_WARN(
          "systemd passed a socket named \"%s\" that no service uses (accept = \"systemd:%s\")",
          name.c_str(), name.c_str());
    }
  }
  return true;
}

int Server::run() {
  uv_async_init(&loop_, &workers_exited_, on_workers_exited);
  workers_exited_.data = this;
  for (unsigned w = 0; w < workers_count_; ++w) {
    std::vector<int> fds;
    for (const ServiceRuntime& svc : runtime_->services)
      fds.push_back(listeners_[svc.listen_key()][w]);
    workers_.push_back(std::make_unique<Worker>(static_cast<int>(w), runtime_, std::move(fds)));
  }
  workers_running_ = workers_count_;
  for (auto& w : workers_) {
    w->start([this] {
      workers_running_.fetch_sub(1);
      uv_async_send(&workers_exited_);
    });
  }

  const std::pair<uv_signal_t*, int> signals[] = {
      {&sigterm_, SIGTERM}, {&sigint_, SIGINT}, {&sighup_, SIGHUP}};
  for (auto [sig, num] : signals) {
    uv_signal_init(&loop_, sig);
    sig->data = this;
    uv_signal_start(sig, on_signal, num);
  }
  for (uv_timer_t* t : {&status_timer_, &watchdog_timer_, &watch_debounce_}) {
    uv_timer_init(&loop_, t);
    t->data = this;
  }
  uv_timer_start(&status_timer_, on_status_timer, kStatusIntervalMs, kStatusIntervalMs);
  if (const uint64_t usec = systemd::watchdog_usec()) {
    const uint64_t ms = std::max<uint64_t>(usec / 2000, 1);
    uv_timer_start(&watchdog_timer_, on_watchdog_timer, ms, ms);
  }
  update_file_watches();

  LOG_INFO("ferry %s ready: %u worker%s, %zu service%s", FERRY_VERSION, workers_count_,
           workers_count_ == 1 ? "" : "s", runtime_->services.size(),
           runtime_->services.size() == 1 ? "" : "s");
  for (const ServiceRuntime& svc : runtime_->services) {
    LOG_INFO("service %s: accept %s, connect %s", svc.config.name.c_str(), svc.listen_key().c_str(),
             connect_summary(svc.config).c_str());
  }
  systemd::notify_ready();
  uv_run(&loop_, UV_RUN_DEFAULT);
  for (auto& w : workers_) w->join();
  for (const auto& [key, fds] : listeners_) unlink_unix_socket(key);
  listeners_.clear();  // the workers closed them
  LOG_INFO("stopped");
  return 0;
}

void Server::on_signal(uv_signal_t* h, int signum) {
  auto* self = static_cast<Server*>(h->data);
  if (signum == SIGHUP) {
    self->reload("SIGHUP");
  } else {
    self->stop(signum);
  }
}

void Server::stop(int signum) {
  const char* name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
  if (stopping_) {
    LOG_INFO("%s again: closing every connection now", name);
    for (auto& w : workers_) w->stop();
    return;
  }
  stopping_ = true;
  const auto timeout = runtime_->config.shutdown_timeout;
  LOG_INFO("%s: stopping; open connections may finish for up to %lldms", name,
           static_cast<long long>(timeout.count()));
  systemd::notify_stopping();
  for (auto& w : workers_) w->drain(timeout);
  uv_timer_stop(&watch_debounce_);
  close_watches();
}

void Server::on_workers_exited(uv_async_t* h) {
  auto* self = static_cast<Server*>(h->data);
  if (self->workers_running_.load() == 0) self->close_main_handles();
}

void Server::close_main_handles() {
  for (uv_signal_t* s : {&sigterm_, &sigint_, &sighup_}) uv_close(handle(s), nullptr);
  for (uv_timer_t* t : {&status_timer_, &watchdog_timer_, &watch_debounce_}) {
    uv_close(handle(t), nullptr);
  }
  close_watches();
  uv_close(handle(&workers_exited_), nullptr);
}

void Server::close_watches() {
  for (uv_fs_event_t* h : std::exchange(watches_, {})) {
    uv_close(handle(h), [](uv_handle_t* c) { delete reinterpret_cast<uv_fs_event_t*>(c); });
  }
}

void Server::on_status_timer(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  size_t active = 0;
  for (auto& w : self->workers_) active += w->active_connections();
  systemd::notify_status(std::to_string(active) + " active connection" + (active == 1 ? "" : "s") +
                         (self->stopping_ ? ", stopping" : ""));
}

void Server::on_watchdog_timer(uv_timer_t* /*t*/) {
  systemd::notify_watchdog();
}

// ---- reload ----------------------------------------------------------------------------------

void Server::reload(const char* cause) {
  // Runs inside a libuv callback: nothing may escape. Building a runtime only throws on
  // allocation failure or a library surprise; either way the running config stays.
  try {
    reload_now(cause);
  } catch (const std::exception& e) {
    LOG_ERROR("reload failed: %s; still running the previous configuration", e.what());
    metrics_.record_reload(false);
    systemd::notify_ready();
  }
}

void Server::reload_now(const char* cause) {
  if (stopping_) return;
  systemd::notify_reloading();
  LOG_INFO("reloading configuration from %s (%s)", runtime_->config.path.c_str(), cause);
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings;
  std::shared_ptr<const Runtime> next;
  std::map<std::string, ListenerFds> opened;  // the new listener set

  LoadResult loaded = load_config_file(runtime_->config.path);
  errors = std::move(loaded.errors);
  warnings = std::move(loaded.warnings);
  if (errors.empty() && loaded.config) {
    RuntimeResult built = build_runtime(*loaded.config, &metrics_, runtime_.get());
    errors = std::move(built.errors);
    warnings.insert(warnings.end(), built.warnings.begin(), built.warnings.end());
    next = std::move(built.runtime);
  }
  if (next) {
    const Config& now = runtime_->config;
    const Config& want = next->config;
    auto restart_only = [](const char* what) {
      LOG_WARN("reload: a change of %s needs a restart; keeping the running value", what);
    };
    if (want.effective_workers() != now.effective_workers()) restart_only("global.workers");
    if (want.user != now.user || want.group != now.group) restart_only("global.user/group");
    if ((want.metrics ? want.metrics->listen.str() : "") !=
        (now.metrics ? now.metrics->listen.str() : "")) {
      restart_only("metrics.listen");
    }
    for (const ServiceRuntime& svc : next->services) {
      std::string why;
      if (!open_listeners(svc, listeners_, opened, why)) {
        errors.push_back(
            {svc.config.accept_pos, "service[" + std::to_string(svc.index) + "].accept", why});
      }
    }
  }
  for (const ConfigError& w : warnings) LOG_WARN("reload: %s", w.str().c_str());

  if (!errors.empty()) {
    // Keep serving with what runs now; close only what this attempt opened.
    for (auto& [key, fds] : opened) {
      if (!listeners_.count(key)) {
        close_fds(fds);
        unlink_unix_socket(key);
      }
    }
    for (const ConfigError& e : errors) LOG_ERROR("reload failed: %s", e.str().c_str());
    LOG_ERROR("reload failed: still running the previous configuration");
    metrics_.record_reload(false);
    systemd::notify_ready();
    return;
  }

  for (unsigned w = 0; w < workers_count_; ++w) {
    std::vector<int> fds;
    for (const ServiceRuntime& svc : next->services) fds.push_back(opened[svc.listen_key()][w]);
    workers_[w]->swap_runtime(next, std::move(fds));
  }
  // Sockets of removed services are closed by the workers when they drop their listeners.
  for (const auto& [key, fds] : listeners_) {
    if (!opened.count(key)) unlink_unix_socket(key);
  }
  listeners_ = std::move(opened);
  log::set_level(next->config.log_level);
  log::set_format(next->config.log_format);
  log::set_access_log(next->config.access_log);
  runtime_ = std::move(next);
  metrics_.record_reload(true);
  update_file_watches();
  LOG_INFO("reload done: %zu service%s", runtime_->services.size(),
           runtime_->services.size() == 1 ? "" : "s");
  systemd::notify_ready();
}

// ---- certificate file watching ---------------------------------------------------------------

void Server::update_file_watches() {
  close_watches();
  seen_fingerprints_.clear();
  if (!runtime_->config.watch_files || stopping_) return;
  std::set<std::string> dirs;
  for (const ServiceRuntime& svc : runtime_->services) {
    seen_fingerprints_.push_back(svc.tls_fingerprint);  // computed from these very files
    for (const std::string& file : tls_input_files(svc.config)) {
      std::string dir = std::filesystem::path(file).parent_path().string();
      dirs.insert(dir.empty() ? "." : dir);
    }
  }
  // A CA directory is watched as a path in its parent: changes inside it need a SIGHUP.
  // Watch directories, not files: renames (atomic replacement, Kubernetes' ..data symlink swap)
  // replace the inode a file watch would be attached to.
  for (const std::string& dir : dirs) {
    auto* h = new uv_fs_event_t{};
    uv_fs_event_init(&loop_, h);
    h->data = this;
    const int rc = uv_fs_event_start(h, on_file_event, dir.c_str(), 0);
    if (rc != 0) {
      LOG_WARN("cannot watch %s for certificate changes: %s", dir.c_str(), uv_strerror(rc));
      uv_close(handle(h), [](uv_handle_t* c) { delete reinterpret_cast<uv_fs_event_t*>(c); });
      continue;
    }
    watches_.push_back(h);
  }
}

void Server::on_file_event(uv_fs_event_t* h, const char* /*filename*/, int /*events*/, int status) {
  auto* self = static_cast<Server*>(h->data);
  if (status < 0 || self->stopping_) return;
  // Any change in a watched directory restarts the debounce; the digests decide afterwards.
  uv_timer_start(&self->watch_debounce_, on_watch_debounce, kWatchDebounceMs, 0);
}

std::vector<std::string> Server::current_fingerprints() const {
  std::vector<std::string> now;
  for (const ServiceRuntime& svc : runtime_->services) now.push_back(tls_fingerprint(svc.config));
  return now;
}

void Server::on_watch_debounce(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  if (!descriptors_available()) {
    if (!self->watch_blocked_logged_)
      LOG_WARN(
          "certificate files changed, but no file descriptor is free to read them: "
          "checking again in %llums",
          static_cast<unsigned long long>(kWatchRetryMs));
    self->watch_blocked_logged_ = true;
    uv_timer_start(&self->watch_debounce_, on_watch_debounce, kWatchRetryMs, 0);
    return;
  }
  self->watch_blocked_logged_ = false;
  std::vector<std::string> now = self->current_fingerprints();
  if (now == self->seen_fingerprints_) return;
  const Runtime* before = self->runtime_.get();
  self->reload("certificate file changed");
  // A failed reload keeps the running Runtime: remember what was seen so the same broken file is
  // not retried on every unrelated event in the directory. (Success refreshed it already.)
  if (self->runtime_.get() == before) self->seen_fingerprints_ = std::move(now);
}

}  // namespace ferry
