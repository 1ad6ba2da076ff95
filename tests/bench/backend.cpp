// backend: the plaintext server behind the proxies in tests/bench/run. One thread, epoll,
// HTTP/1.1 keep-alive, just enough of it for loadgen.cpp:
//   GET /bytes/N HTTP/1.1      -> 200, Content-Length: N, N zero bytes (sendfile from a memfd)
//   PUT /upload/N HTTP/1.1     -> reads and discards N body bytes (recv MSG_TRUNC), then 200
//                                 with an empty body
//   GET <anything else>        -> 200 with a fixed 64-byte body
// A connection closed by the client is closed; a request it cannot parse closes it.
//
//   backend --port P [--host 127.0.0.1]     prints "listening P" once it accepts
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kFileSize = 16u << 20;  // the memfd the bodies are sent from, in a loop
constexpr const char kSmallBody[] =
    "ferry bench backend: a small fixed response for latency tests.\n";  // 64 bytes

enum class St { Request, SendHead, SendFile, Discard };

struct Conn {
  int fd = -1;
  St st = St::Request;
  std::string in;
  std::string out;
  size_t out_off = 0;
  uint64_t body = 0;   // SendFile: bytes left to send; Discard: bytes left to read
  bool then_file = false;
  uint32_t interest = 0;
};

int g_ep = -1;
int g_file = -1;
off_t g_file_off = 0;

void set_interest(Conn* c, uint32_t ev) {
  if (c->interest == ev) return;
  epoll_event e{};
  e.events = ev;
  e.data.ptr = c;
  epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e);
  c->interest = ev;
}

void close_conn(Conn* c) {
  epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  delete c;
}

// Parses one request from c->in if complete. Returns false on a bad request.
bool parse_request(Conn* c, bool& have) {
  have = false;
  size_t end = c->in.find("\r\n\r\n");
  if (end == std::string::npos) return c->in.size() < 8192;
  std::string line = c->in.substr(0, c->in.find("\r\n"));
  c->in.erase(0, end + 4);
  have = true;
  unsigned long long n = 0;
  if (std::sscanf(line.c_str(), "GET /bytes/%llu ", &n) == 1) {
    c->out = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
             std::to_string(n) + "\r\n\r\n";
    c->out_off = 0;
    c->body = n;
    c->then_file = n > 0;
    c->st = St::SendHead;
  } else if (std::sscanf(line.c_str(), "PUT /upload/%llu ", &n) == 1) {
    c->body = n;
    size_t take = static_cast<size_t>(std::min<uint64_t>(n, c->in.size()));
    c->in.erase(0, take);
    c->body -= take;
    c->st = St::Discard;
  } else if (line.rfind("GET ", 0) == 0) {
    c->out = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
             std::to_string(sizeof kSmallBody - 1) + "\r\n\r\n" + kSmallBody;
    c->out_off = 0;
    c->then_file = false;
    c->st = St::SendHead;
  } else {
    return false;
  }
  return true;
}

// Runs c as far as it goes without blocking. Returns false when c was closed.
bool drive(Conn* c) {
  static std::vector<char> buf(256 * 1024);
  for (;;) {
    switch (c->st) {
      case St::Request: {
        bool have = false;
        if (!parse_request(c, have)) {
          close_conn(c);
          return false;
        }
        if (have) break;
        ssize_t r = recv(c->fd, buf.data(), buf.size(), 0);
        if (r > 0) {
          c->in.append(buf.data(), static_cast<size_t>(r));
          break;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          set_interest(c, EPOLLIN);
          return true;
        }
        close_conn(c);  // EOF or error
        return false;
      }
      case St::SendHead: {
        while (c->out_off < c->out.size()) {
          ssize_t r = send(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off,
                           MSG_NOSIGNAL);
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(c, EPOLLOUT);
            return true;
          }
          if (r < 0) {
            close_conn(c);
            return false;
          }
          c->out_off += static_cast<size_t>(r);
        }
        c->out.clear();
        c->st = c->then_file ? St::SendFile : St::Request;
        break;
      }
      case St::SendFile: {
        while (c->body > 0) {
          off_t off = g_file_off;
          size_t n = static_cast<size_t>(
              std::min<uint64_t>(c->body, kFileSize - static_cast<size_t>(off)));
          ssize_t r = sendfile(c->fd, g_file, &off, n);
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(c, EPOLLOUT);
            return true;
          }
          if (r <= 0) {
            close_conn(c);
            return false;
          }
          c->body -= static_cast<uint64_t>(r);
          g_file_off = off % static_cast<off_t>(kFileSize);
        }
        c->st = St::Request;
        break;
      }
      case St::Discard: {
        while (c->body > 0) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(c->body, 1u << 30));
          ssize_t r = recv(c->fd, buf.data(), n, MSG_TRUNC);  // TCP: drops the bytes, no copy
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(c, EPOLLIN);
            return true;
          }
          if (r <= 0) {
            close_conn(c);
            return false;
          }
          c->body -= static_cast<uint64_t>(r);
        }
        c->out = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        c->out_off = 0;
        c->then_file = false;
        c->st = St::SendHead;
        break;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--port") port = std::atoi(argv[i + 1]);
    else if (a == "--host") host = argv[i + 1];
  }
  if (port <= 0) {
    std::fprintf(stderr, "usage: backend --port P [--host 127.0.0.1]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  g_file = memfd_create("bench-body", MFD_CLOEXEC);
  std::vector<char> zeros(1u << 20, 0);
  for (size_t done = 0; done < kFileSize; done += zeros.size()) {
    if (write(g_file, zeros.data(), zeros.size()) != static_cast<ssize_t>(zeros.size())) {
      std::perror("backend: memfd write");
      return 1;
    }
  }

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(lfd, 65535) != 0) {
    std::perror("backend: bind/listen");
    return 1;
  }
  g_ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event le{};
  le.events = EPOLLIN;
  le.data.ptr = nullptr;
  epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &le);
  std::printf("listening %d\n", port);
  std::fflush(stdout);

  std::vector<epoll_event> evs(1024);
  for (;;) {
    int n = epoll_wait(g_ep, evs.data(), static_cast<int>(evs.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("backend: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.ptr == nullptr) {
        for (int k = 0; k < 256; ++k) {
          int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
              std::fprintf(stderr, "backend: accept: %s\n", strerror(errno));
              usleep(10000);
            }
            break;
          }
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          auto* c = new Conn;
          c->fd = fd;
          c->interest = EPOLLIN;
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.ptr = c;
          epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      drive(static_cast<Conn*>(evs[i].data.ptr));
    }
  }
}
