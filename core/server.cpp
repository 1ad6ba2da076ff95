#include "core/server.h"

#include <signal.h>
#include <unistd.h>

#include <utility>

#include "core/listener.h"
#include "core/log.h"
#include "core/worker.h"

namespace ferry {

Server::Server(std::shared_ptr<const Runtime> runtime)
    : runtime_(std::move(runtime)), workers_count_(runtime_->config.effective_workers()) {
  uv_loop_init(&loop_);
}

Server::~Server() {
  for (auto& w : workers_) w->join();
  workers_.clear();
  // Sockets bound but never handed to workers (start-up failed after bind()).
  for (auto& fds : listen_fds_) {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  }
  uv_loop_close(&loop_);
}

bool Server::bind(std::vector<ConfigError>& errors) {
  bool ok = true;
  for (const ServiceRuntime& svc : runtime_->services) {
    std::string why;
    if (address_in_use(svc.accept, why)) {
      errors.push_back(
          {svc.config.accept_pos, "service[" + std::to_string(svc.index) + "].accept", why});
      ok = false;
    }
  }
  if (!ok) return false;
  listen_fds_.assign(workers_count_, {});
  for (unsigned w = 0; w < workers_count_; ++w) {
    for (const ServiceRuntime& svc : runtime_->services) {
      std::string why;
      const int fd = open_listen_socket(svc.accept, why);
      if (fd < 0) {
        // One error per service, not one per worker.
        if (w == 0) {
          errors.push_back(
              {svc.config.accept_pos, "service[" + std::to_string(svc.index) + "].accept", why});
        }
        ok = false;
      }
      listen_fds_[w].push_back(fd);
    }
  }
  if (!ok) {
    for (auto& fds : listen_fds_) {
      for (int fd : fds) {
        if (fd >= 0) ::close(fd);
      }
    }
    listen_fds_.clear();
  }
  return ok;
}

int Server::run() {
  for (unsigned w = 0; w < workers_count_; ++w) {
    workers_.push_back(std::make_unique<Worker>(static_cast<int>(w), runtime_, listen_fds_[w]));
  }
  listen_fds_.clear();  // owned by the workers' listeners now
  for (auto& w : workers_) w->start();

  const std::pair<uv_signal_t*, int> signals[] = {
      {&sigterm_, SIGTERM}, {&sigint_, SIGINT}, {&sighup_, SIGHUP}};
  for (auto [sig, num] : signals) {
    uv_signal_init(&loop_, sig);
    sig->data = this;
    uv_signal_start(sig, on_signal, num);
  }
  LOG_INFO("ferry %s ready: %u worker%s, %zu service%s", FERRY_VERSION, workers_count_,
           workers_count_ == 1 ? "" : "s", runtime_->services.size(),
           runtime_->services.size() == 1 ? "" : "s");
  for (const ServiceRuntime& svc : runtime_->services) {
    LOG_INFO("service %s: accept %s, connect %s", svc.config.name.c_str(), svc.accept.str().c_str(),
             svc.backend.str().c_str());
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  for (auto& w : workers_) w->join();
  LOG_INFO("stopped");
  return 0;
}

void Server::on_signal(uv_signal_t* h, int signum) {
  auto* self = static_cast<Server*>(h->data);
  if (signum == SIGHUP) {
    LOG_WARN("SIGHUP: configuration reload is not implemented yet; still running the old one");
    return;
  }
  LOG_INFO("%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  self->stop();
}

void Server::stop() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& w : workers_) w->stop();
  for (uv_signal_t* s : {&sigterm_, &sigint_, &sighup_}) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  }
}

}  // namespace ferry
