#pragma once
// Command-line parsing. Exit codes: 0 ok, 1 config or start-up error, 2 usage error.

#include <string>

namespace ferry {

inline constexpr int kExitOk = 0;
inline constexpr int kExitConfig = 1;
inline constexpr int kExitUsage = 2;

struct CliOptions {
  enum class Action { run, check, version, help };
  Action action = Action::run;
  std::string config_path = "/etc/ferry/ferry.toml";
};

struct CliResult {
  CliOptions options;
  std::string error;  // non-empty: usage error
};

CliResult parse_cli(int argc, char** argv);
const char* usage_text();
std::string version_text();

}  // namespace ferry
