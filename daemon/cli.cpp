#include "daemon/cli.h"

#include <openssl/crypto.h>
#include <uv.h>

#include <string_view>

namespace ferry {

const char* usage_text() {
  return "usage: ferry [--config FILE] [--check] [--version] [--help]\n"
         "\n"
         "  -c, --config FILE  configuration file (default /etc/ferry/ferry.toml)\n"
         "  -t, --check        validate the configuration, load every certificate and key,\n"
         "                     print a summary and exit (0 ok, 1 errors)\n"
         "  -V, --version      print the versions of ferry, OpenSSL and libuv\n"
         "  -h, --help         this text\n"
         "\n"
         "Runs in the foreground. Signals: SIGTERM/SIGINT stop.\n"
         "Exit codes: 0 ok, 1 configuration or start-up error, 2 usage error.\n";
}

std::string version_text() {
  std::string out = "ferry " FERRY_VERSION "\n";
  out += OpenSSL_version(OPENSSL_VERSION);
  out += "\nlibuv ";
  out += uv_version_string();
  out += "\n";
  return out;
}

CliResult parse_cli(int argc, char** argv) {
  CliResult r;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-c" || arg == "--config") {
      if (i + 1 >= argc) {
        r.error = std::string(arg) + " needs a FILE argument";
        return r;
      }
      r.options.config_path = argv[++i];
    } else if (arg.starts_with("--config=")) {
      r.options.config_path = std::string(arg.substr(9));
      if (r.options.config_path.empty()) {
        r.error = "--config= needs a FILE argument";
        return r;
      }
    } else if (arg == "-t" || arg == "--check") {
      r.options.action = CliOptions::Action::check;
    } else if (arg == "-V" || arg == "--version") {
      r.options.action = CliOptions::Action::version;
    } else if (arg == "-h" || arg == "--help") {
      r.options.action = CliOptions::Action::help;
    } else {
      r.error = "unknown argument: " + std::string(arg);
      return r;
    }
  }
  return r;
}

}  // namespace ferry
