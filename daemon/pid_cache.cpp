// getpid() without a system call, for the ferry executable only.
//
// OpenSSL 3.0's random generator checks for a fork before every draw by calling getpid(), and
// glibc (since 2.25) makes that a real system call each time: a full TLS 1.3 handshake calls it
// 9 times, a resumed one 6. On virtual machines where system calls are expensive that was ~2% of
// a worker's CPU in the handshake benchmark (docs/benchmarks.md). This definition interposes
// glibc's for every library in the process (the executable comes first in symbol lookup) and
// asks the kernel once per process.
//
// Still correct across fork(): the child's handler clears the cache before fork() returns in the
// child, so OpenSSL's fork detection keeps working. ferry itself never forks; the only other way
// to a new process, posix_spawn/vfork, runs exec in the child without calling getpid().

#include <pthread.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>

namespace {

std::atomic<pid_t> cached_pid{0};

void forget_pid() {
  cached_pid.store(0, std::memory_order_relaxed);
}

pid_t kernel_pid() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, forget_pid);
    return true;
  }();
  (void)registered;
  return static_cast<pid_t>(::syscall(SYS_getpid));
}

}  // namespace

extern "C" pid_t getpid() noexcept {
  pid_t pid = cached_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    pid = kernel_pid();
    cached_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}
