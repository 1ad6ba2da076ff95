"""A plaintext TCP test backend for ferry's integration tests (importable and runnable).

The first line the client sends picks the behaviour of the connection:

  ECHO\\n          echo everything until EOF, then close
  SINK\\n          read until EOF, reply with the hex sha256 of what was read (plus "\\n"), close
                  (the client must half-close to get the reply: exercises half-close)
  SINK <ms>\\n     the same, but first read nothing for <ms> milliseconds (a stalled backend)
  SOURCE <n>\\n    send n deterministic bytes (source_bytes / source_digest), then close
  HALF <n>\\n      send n SOURCE bytes, shut the write side (half-close), then read until EOF and
                  record the sha256 of what was read in .half_digests (backend closes first)
  RESET\\n         reset the connection (RST: SO_LINGER 0, close) without sending anything
  GET / HTTP/1.1  a minimal HTTP/1.1 server: reads the header, answers 200 with HTTP_BODY, closes

With banner=b"..." the backend speaks first: it sends the banner on accept, before reading.

    python3 backend.py [PORT]     # runs until interrupted, prints the port
"""

import hashlib
import socket
import socketserver
import struct
import sys
import threading
import time

HTTP_BODY = b"hello from the ferry test backend\n"

_PATTERN_LEN = 1 << 20
_pattern_cache = {}


def _pattern(seed):
    """1 MiB made of sha256(seed || counter) blocks."""
    p = _pattern_cache.get(seed)
    if p is None:
        blocks = []
        for i in range(_PATTERN_LEN // 32):
            blocks.append(hashlib.sha256(seed + i.to_bytes(8, "big")).digest())
        p = _pattern_cache[seed] = b"".join(blocks)
    return p


def source_chunks(n, seed=b"ferry"):
    """The SOURCE stream of n bytes, in chunks of at most 1 MiB."""
    p = _pattern(seed)
    while n > 0:
        k = min(n, len(p))
        yield p[:k]
        n -= k


def source_bytes(n, seed=b"ferry"):
    return b"".join(source_chunks(n, seed))


def source_digest(n, seed=b"ferry"):
    h = hashlib.sha256()
    for c in source_chunks(n, seed):
        h.update(c)
    return h.hexdigest()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server
        with srv.lock:
            srv.accepted += 1
        sock = self.request
        sock.settimeout(srv.io_timeout)
        try:
            if srv.banner:
                sock.sendall(srv.banner)
            self._serve(sock)
        except OSError:
            with srv.lock:
                srv.errors += 1
        finally:
            with srv.lock:
                srv.finished += 1

    def _serve(self, sock):
        buf = b""
        while b"\n" not in buf and len(buf) < 4096:
            b = sock.recv(4096)
            if not b:
                return
            buf += b
        line, _, rest = buf.partition(b"\n")
        line = line.rstrip(b"\r")
        if line == b"ECHO":
            if rest:
                sock.sendall(rest)
            while True:
                b = sock.recv(1 << 16)
                if not b:
                    break
                sock.sendall(b)
            sock.shutdown(socket.SHUT_WR)
        elif line == b"SINK" or line.startswith(b"SINK "):
            if line != b"SINK":
                time.sleep(int(line.split()[1]) / 1000)
            h = hashlib.sha256(rest)
            n = len(rest)
            while True:
                b = sock.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
            with self.server.lock:
                self.server.sunk.append(n)
            sock.sendall(h.hexdigest().encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
        elif line.startswith(b"SOURCE "):
            n = int(line.split()[1])
            for c in source_chunks(n):
                sock.sendall(c)
            sock.shutdown(socket.SHUT_WR)
        elif line == b"RESET":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        elif line.startswith(b"HALF "):
            n = int(line.split()[1])
            for c in source_chunks(n):
                sock.sendall(c)
            sock.shutdown(socket.SHUT_WR)
            h = hashlib.sha256(rest)
            while True:
                b = sock.recv(1 << 16)
                if not b:
                    break
                h.update(b)
            with self.server.lock:
                self.server.half_digests.append(h.hexdigest())
        elif line.startswith(b"GET ") or line.startswith(b"HEAD "):
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                b = sock.recv(4096)
                if not b:
                    break
                buf += b
            body = HTTP_BODY if line.startswith(b"GET ") else b""
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(HTTP_BODY), body))
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(b"ERROR unknown mode\n")


class Backend(socketserver.ThreadingTCPServer):
    """Threaded backend on 127.0.0.1:port (0 = ephemeral). start() / stop(); .port, .accepted."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port=0, banner=None, io_timeout=120):
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = self.server_address[1]
        self.banner = banner
        self.io_timeout = io_timeout
        self.lock = threading.Lock()
        self.accepted = 0
        self.finished = 0
        self.errors = 0
        self.sunk = []  # byte counts read by SINK connections
        self.half_digests = []  # sha256 hex of what HALF connections read after their EOF
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    b = Backend(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"backend listening on 127.0.0.1:{b.port}", flush=True)
    try:
        b.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        b.server_close()
