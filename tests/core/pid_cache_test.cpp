// daemon/pid_cache.cpp: getpid() answers from a cache, and a forked child gets its own pid.
#include <doctest/doctest.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

TEST_CASE("getpid is the kernel's pid, in the parent and in a forked child") {
  const pid_t kernel = static_cast<pid_t>(::syscall(SYS_getpid));
  CHECK(getpid() == kernel);
  CHECK(getpid() == kernel);  // the cached answer
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Exit status 0 only if the child's getpid() is its own, not the parent's cached one.
    const pid_t own = static_cast<pid_t>(::syscall(SYS_getpid));
    ::_exit(getpid() == own && own != kernel ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(getpid() == kernel);
}
