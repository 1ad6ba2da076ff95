#include "core/process_metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace ferry {
namespace {

prometheus::MetricFamily one_value(const char* name, const char* help, prometheus::MetricType type,
                                   double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

// Seconds since the epoch at which the system booted (btime in /proc/stat).
double boot_time() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

int count_open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor opendir itself holds
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the parenthesised command name (which may contain spaces).
  const auto close_paren = stat.rfind(')');
  if (close_paren != std::string::npos) {
    std::istringstream fields(stat.substr(close_paren + 2));
    std::vector<std::string> f;
    for (std::string v; fields >> v;) f.push_back(v);
    // f[0] is field 3 (state); utime = field 14, stime = 15, starttime = 22, rss = 24.
    if (f.size() > 21) {
      const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
      const double cpu = (std::stod(f[11]) + std::stod(f[12])) / ticks;
      const double start = boot_time() + std::stod(f[19]) / ticks;
      const double rss = std::stod(f[21]) * static_cast<double>(sysconf(_SC_PAGESIZE));
      out.push_back(one_value("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.",
                              prometheus::MetricType::Counter, cpu));
      out.push_back(one_value("process_resident_memory_bytes", "Resident memory size in bytes.",
                              prometheus::MetricType::Gauge, rss));
      out.push_back(one_value("process_start_time_seconds",
                              "Start time of the process since unix epoch in seconds.",
                              prometheus::MetricType::Gauge, start));
    }
  }
  const int fds = count_open_fds();
  if (fds >= 0) {
    out.push_back(one_value("process_open_fds", "Number of open file descriptors.",
                            prometheus::MetricType::Gauge, fds));
  }
  return out;
}

}  // namespace ferry
