// ferry: parse the command line, load and validate the config, build the runtime, run.

#include <malloc.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <tuple>

#include "config/config.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/runtime.h"
#include "core/server.h"
#include "daemon/check.h"
#include "daemon/cli.h"
#include "daemon/privileges.h"

namespace {

void print_errors(const std::vector<ferry::ConfigError>& errors, const char* prefix) {
  for (const auto& e : errors) {
    ferry::ConfigError shown = e;
    shown.message = prefix + shown.message;
    std::fprintf(stderr, "%s\n", shown.str().c_str());
  }
}

bool by_position(const ferry::ConfigError& a, const ferry::ConfigError& b) {
  return std::tie(a.pos.line, a.pos.column) < std::tie(b.pos.line, b.pos.column);
}

int run(const ferry::CliOptions& opts) {
  using ferry::kExitConfig;
  const bool check = opts.action == ferry::CliOptions::Action::check;

  ferry::LoadResult loaded = ferry::load_config_file(opts.config_path);
  print_errors(loaded.warnings, "warning: ");
  if (!loaded.errors.empty() || !loaded.config) {
    // Report certificate problems together with the config errors: all errors in one go.
    if (loaded.partial) {
      for (const ferry::ServiceConfig& svc : loaded.partial->services) {
        if (svc.cert_file.empty()) continue;
        std::vector<ferry::ConfigError> ignored_warnings;
        ferry::build_server_tls_context(svc, loaded.errors, ignored_warnings);
      }
      std::stable_sort(loaded.errors.begin(), loaded.errors.end(), by_position);
    }
    print_errors(loaded.errors, "");
    return kExitConfig;
  }
  const ferry::Config& config = *loaded.config;
  ferry::log::set_level(config.log_level);
  ferry::log::set_format(config.log_format);
  ferry::log::set_access_log(config.access_log);

  std::unique_ptr<ferry::Metrics> metrics;
  if (!check) metrics = std::make_unique<ferry::Metrics>();
  ferry::RuntimeResult built = ferry::build_runtime(config, metrics.get());
  // An unknown user or group is reported by --check too, and before anything is bound.
  if (!ferry::check_user_exists(config, built.errors)) {
    std::stable_sort(built.errors.begin(), built.errors.end(), by_position);
  }
  print_errors(built.warnings, "warning: ");
  if (!built.errors.empty()) {
    print_errors(built.errors, "");
    return kExitConfig;
  }
  if (check) {
    ferry::print_summary(*built.runtime, stdout);
    return ferry::kExitOk;
  }

  std::vector<ferry::ConfigError> errors;
  if (!ferry::apply_open_files_limit(config, errors)) {
    print_errors(errors, "");
    return kExitConfig;
  }
  ferry::Server server(built.runtime, *metrics);
  if (!server.bind(errors)) {
    print_errors(errors, "");
    return kExitConfig;
  }
  if (config.metrics) {
    try {
      metrics->start_exposer(config.metrics->listen);
    } catch (const std::exception& e) {
      print_errors({{config.metrics->listen_pos, "metrics.listen",
                     "cannot listen on " + config.metrics->listen.str() + ": " + e.what()}},
                   "");
      return kExitConfig;
    }
  }
  // Every listener is bound and every key read: now give up root (and become non-dumpable).
  if (!ferry::drop_privileges(config, errors)) {
    print_errors(errors, "");
    return kExitConfig;
  }
  return server.run();
}

}  // namespace

int main(int argc, char** argv) {
  // Writes to a socket the peer has closed must fail with EPIPE, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  // glibc returns free memory at the top of a heap to the kernel once it exceeds 128 KiB: a
  // worker's heap crossed that line back and forth every few connections, one madvise() each
  // (2% of a handshake's CPU). Keep up to 1 MiB per heap instead. Unless the operator tuned it.
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_") && !std::getenv("GLIBC_TUNABLES")) {
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
  }

  const ferry::CliResult cli = ferry::parse_cli(argc, argv);
  if (!cli.error.empty()) {
    std::fprintf(stderr, "ferry: %s\n%s", cli.error.c_str(), ferry::usage_text());
    return ferry::kExitUsage;
  }
  switch (cli.options.action) {
    case ferry::CliOptions::Action::help:
      std::fputs(ferry::usage_text(), stdout);
      return ferry::kExitOk;
    case ferry::CliOptions::Action::version:
      std::fputs(ferry::version_text().c_str(), stdout);
      return ferry::kExitOk;
    default:
      break;
  }
  try {
    return run(cli.options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry: start-up failed: %s\n", e.what());
    return ferry::kExitConfig;
  }
}
