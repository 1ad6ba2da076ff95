#pragma once
// A socket address of any family ferry uses (IPv4, IPv6, Unix), by value.

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>

namespace ferry {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t len = 0;

  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
  bool is_unix() const { return storage.ss_family == AF_UNIX; }
  std::string str() const;   // "127.0.0.1:8080", "[::1]:8443", "unix:/run/app.sock"
  std::string host() const;  // "127.0.0.1", "::1" (no brackets); "?" if not IP
  uint16_t port() const;     // 0 if not IP

  static SocketAddress from(const sockaddr* sa, socklen_t len);
  // A Unix socket path (at most 107 bytes); nullopt if too long.
  static std::optional<SocketAddress> from_unix(const std::string& path);
  std::string unix_path() const;  // "" if not a Unix address
};

}  // namespace ferry
