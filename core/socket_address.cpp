#include "core/socket_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

namespace ferry {

std::string SocketAddress::host() const {
  char text[INET6_ADDRSTRLEN] = "?";
  if (storage.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, text,
              sizeof text);
  } else if (storage.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, text,
              sizeof text);
  }
  return text;
}

uint16_t SocketAddress::port() const {
  if (storage.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  if (storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  }
  return 0;
}

std::string SocketAddress::unix_path() const {
  if (storage.ss_family != AF_UNIX) return "";
  const auto* un = reinterpret_cast<const sockaddr_un*>(&storage);
  const size_t max =
      len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
  return std::string(un->sun_path, strnlen(un->sun_path, std::min(max, sizeof un->sun_path)));
}

std::string SocketAddress::str() const {
  if (storage.ss_family == AF_UNIX) {
    const std::string path = unix_path();
    return path.empty() ? "unix:(unnamed)" : "unix:" + path;
  }
  const bool v6 = storage.ss_family == AF_INET6;
  std::string out;
  if (v6) out.push_back('[');
  out.append(host());
  if (v6) out.push_back(']');
  out.push_back(':');
  out.append(std::to_string(port()));
  return out;
}

SocketAddress SocketAddress::from(const sockaddr* sa, socklen_t sa_len) {
  SocketAddress out;
  out.len = std::min<socklen_t>(sa_len, sizeof out.storage);
  std::memcpy(&out.storage, sa, out.len);
  return out;
}

std::optional<SocketAddress> SocketAddress::from_unix(const std::string& path) {
  SocketAddress out;
  auto* un = reinterpret_cast<sockaddr_un*>(&out.storage);
  if (path.empty() || path.size() >= sizeof un->sun_path) return std::nullopt;
  un->sun_family = AF_UNIX;
  std::memcpy(un->sun_path, path.data(), path.size());
  out.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return out;
}

}  // namespace ferry
