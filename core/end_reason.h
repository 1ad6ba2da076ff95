#pragma once
// Why a connection ended: the bounded set shared by the access log and the metrics.

#include <array>

namespace ferry {

enum class EndReason {
  done,                    // both directions finished cleanly
  handshake_failed,        // TLS handshake with the client failed (see HandshakeFailure)
  backend_connect_failed,  // backend refused, unreachable or connect timed out
  backend_error,           // read/write error or reset on the backend side
  client_error,            // TLS or socket error on the client side
  idle_timeout,            // no bytes in either direction for idle_timeout
  shutdown,                // ferry is stopping
  rejected,                // before TLS: a bad/missing PROXY header, or denied by allow/deny
};

inline constexpr std::array kAllEndReasons = {
    EndReason::done,          EndReason::handshake_failed, EndReason::backend_connect_failed,
    EndReason::backend_error, EndReason::client_error,     EndReason::idle_timeout,
    EndReason::shutdown,      EndReason::rejected};

constexpr const char* to_string(EndReason r) {
  switch (r) {
    case EndReason::done:
      return "done";
    case EndReason::handshake_failed:
      return "handshake_failed";
    case EndReason::backend_connect_failed:
      return "backend_connect_failed";
    case EndReason::backend_error:
      return "backend_error";
    case EndReason::client_error:
      return "client_error";
    case EndReason::idle_timeout:
      return "idle_timeout";
    case EndReason::shutdown:
      return "shutdown";
    case EndReason::rejected:
      return "rejected";
  }
  return "unknown";
}

}  // namespace ferry
