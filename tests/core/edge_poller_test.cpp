// EdgePoller: a socket added once reports each new readiness edge, a socket that is closed leaves
// the set, and close() leaves a loop with no handle (uv_loop_close() == 0).

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "core/edge_poller.h"

namespace {

using ferry::EdgePoller;

struct Seen {
  int calls = 0;
  uint32_t last = 0;
};

void record(void* owner, uint32_t events) {
  auto* s = static_cast<Seen*>(owner);
  ++s->calls;
  s->last = events;
}

// One loop turn that waits for I/O at most `ms` (a guard timer bounds the wait).
void turn(uv_loop_t* loop, uint64_t ms) {
  uv_timer_t guard;
  uv_timer_init(loop, &guard);
  uv_timer_start(
      &guard, [](uv_timer_t*) {}, ms, 0);
  uv_run(loop, UV_RUN_ONCE);
  uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
}

}  // namespace

TEST_CASE("edge poller: one registration, an edge per change, gone at close") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  {
    EdgePoller poller(&loop);
    REQUIRE(poller.start());
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    Seen seen;
    EdgePoller::Watch w{record, &seen};
    REQUIRE(poller.add(sv[0], &w) == 0);

    turn(&loop, 200);  // a fresh socket is writable: reported once on registration
    CHECK(seen.calls == 1);
    CHECK((seen.last & EPOLLOUT) != 0);
    turn(&loop, 50);  // edge-triggered: nothing new, no call
    CHECK(seen.calls == 1);

    REQUIRE(::write(sv[1], "x", 1) == 1);
    turn(&loop, 200);
    CHECK(seen.calls == 2);
    CHECK((seen.last & EPOLLIN) != 0);
    turn(&loop, 50);  // the byte is still unread, but there was no new edge
    CHECK(seen.calls == 2);
    REQUIRE(::write(sv[1], "y", 1) == 1);  // new data: a new edge even though unread
    turn(&loop, 200);
    CHECK(seen.calls == 3);

    ::close(sv[0]);  // leaves the set: the peer's activity reports nothing
    ::send(sv[1], "z", 1, MSG_NOSIGNAL);
    ::close(sv[1]);
    turn(&loop, 50);
    CHECK(seen.calls == 3);

    poller.close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_FALSE(poller.open());
  }
  CHECK(uv_loop_close(&loop) == 0);
}
