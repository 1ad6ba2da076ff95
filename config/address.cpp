// "host:port" and "[v6addr]:port" as written in the config. No name resolution here.
#include <arpa/inet.h>

#include <string>

#include "config/config.h"

namespace ferry {
namespace {

std::optional<HostPort> fail(std::string* why, std::string message) {
  if (why) *why = std::move(message);
  return std::nullopt;
}

bool is_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// A host name or an IPv4 address: letters, digits, '.', '-' and '_'.
bool valid_host(std::string_view host) {
  for (char c : host) {
    if (!is_alnum(c) && c != '.' && c != '-' && c != '_') return false;
  }
  return true;
}

// An IPv6 address, optionally with a zone ("fe80::1%eth0").
bool valid_ipv6(std::string_view host) {
  const size_t percent = host.find('%');
  const std::string addr(host.substr(0, percent));
  in6_addr out{};
  if (inet_pton(AF_INET6, addr.c_str(), &out) != 1) return false;
  if (percent == std::string_view::npos) return true;
  const std::string_view zone = host.substr(percent + 1);
  if (zone.empty()) return false;
  for (char c : zone) {
    if (!is_alnum(c) && c != '.' && c != '-' && c != '_') return false;
  }
  return true;
}

}  // namespace

std::optional<HostPort> parse_host_port(std::string_view text, std::string* why) {
  if (text.empty()) return fail(why, "empty (use host:port or [v6addr]:port)");

  std::string_view host;
  std::string_view port;
  const bool bracketed = text.front() == '[';
  if (bracketed) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return fail(why, "missing ']' after IPv6 address");
    host = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return fail(why, "missing ':port' after ']'");
    port = rest.substr(1);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return fail(why, "missing port (use host:port or [v6addr]:port)");
    }
    host = text.substr(0, colon);
    if (host.find(':') != std::string_view::npos) {
      return fail(why, "IPv6 addresses need brackets, e.g. [::1]:443");
    }
    port = text.substr(colon + 1);
  }

  if (host.empty()) return fail(why, "missing host");
  if (bracketed && !valid_ipv6(host)) {
    return fail(why, "bad IPv6 address \"" + std::string(host) + "\"");
  }
  if (!bracketed && !valid_host(host)) return fail(why, "bad host \"" + std::string(host) + "\"");

  if (port.empty()) return fail(why, "missing port");
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return fail(why, "bad port \"" + std::string(port) + "\"");
    if (value <= 65535) value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value == 0 || value > 65535) return fail(why, "port must be between 1 and 65535");

  HostPort result;
  result.host = std::string(host);
  result.port = static_cast<uint16_t>(value);
  return result;
}

std::optional<Endpoint> parse_endpoint(std::string_view text, std::string* why) {
  Endpoint result;
  if (text.starts_with("unix:")) {
    const std::string_view path = text.substr(5);
    auto bad = [why](std::string message) -> std::optional<Endpoint> {
      if (why) *why = std::move(message);
      return std::nullopt;
    };
    if (path.empty() || path.front() != '/') return bad("unix: needs an absolute path");
    if (path.size() > 107) return bad("unix socket path longer than 107 bytes");
    if (path.find('\0') != std::string_view::npos) return bad("unix socket path contains NUL");
    result.unix_path = std::string(path);
    return result;
  }
  auto hp = parse_host_port(text, why);
  if (!hp) return std::nullopt;
  result.tcp = std::move(*hp);
  return result;
}

std::string ascii_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string Endpoint::str() const {
  return is_unix() ? "unix:" + unix_path : tcp.str();
}

std::string HostPort::str() const {
  const std::string port_text = std::to_string(port);
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port_text;
  return host + ":" + port_text;
}

}  // namespace ferry
