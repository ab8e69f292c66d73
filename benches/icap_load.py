"""Raw-ICAP keep-alive load generator, shared by the server benchmarks in benches/.

    python3 benches/icap_load.py PORT SERVICE BODY_FILE CONNS SECS [--allow-204] [--preview]

CONNS threads, each on its own keep-alive connection, send RESPMOD with the body of BODY_FILE
(chunked, behind a small HTTP response head), one transaction after the other, for SECS
seconds. --allow-204 sends Allow: 204. --preview first asks the service's OPTIONS for its
Preview size, sends that much as a preview (with ieof when the body fits) and the rest after
100 Continue.

Every answer is read whole and checked: a 204, or a 200 that echoes the body unchanged;
anything else, or a broken connection, counts as an error (the connection is opened again).
Prints one line: 204s, 200 echoes, errors, seconds the load took (the generator's own
start-up left out).

The receive side keeps one bytearray and an offset (no copy of what is left per piece), so a
1 MiB echo in small chunks costs the generator little next to the servers it loads.
"""
import socket
import sys
import threading
import time

args = [a for a in sys.argv[1:] if not a.startswith("--")]
flags = {a for a in sys.argv[1:] if a.startswith("--")}
port, service, path, conns, secs = int(args[0]), args[1], args[2], int(args[3]), float(args[4])
allow_204 = "--allow-204" in flags
body = open(path, "rb").read()
body_view = memoryview(body)
http = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)


class Closed(OSError):
    pass


class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = bytearray()
        self.pos = 0

    def _fill(self):
        if self.pos and self.pos >= len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        got = self.s.recv(1 << 18)
        if not got:
            raise Closed("closed")
        self.buf += got

    def until(self, sep):
        while True:
            i = self.buf.find(sep, self.pos)
            if i >= 0:
                end = i + len(sep)
                out = bytes(self.buf[self.pos:end])
                self.pos = end
                return out
            self._fill()

    def take_view(self, n):
        while len(self.buf) - self.pos < n:
            self._fill()
        out = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n):
        self.take_view(n).release()


def options_preview():
    c = Conn()
    c.s.sendall(b"OPTIONS icap://127.0.0.1:%d/%s ICAP/1.0\r\nHost: 127.0.0.1\r\n"
                b"Encapsulated: null-body=0\r\n\r\n" % (port, service.encode()))
    head = c.until(b"\r\n\r\n")
    c.s.close()
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"preview:"):
            return int(line.split(b":", 1)[1])
    return None


preview = options_preview() if "--preview" in flags else None
icap_head = (b"RESPMOD icap://127.0.0.1:%d/%s ICAP/1.0\r\nHost: 127.0.0.1\r\n" % (port, service.encode())
             + (b"Allow: 204\r\n" if allow_204 else b"")
             + (b"Preview: %d\r\n" % preview if preview is not None else b"")
             + b"Encapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(http))


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n" if data else b""


if preview is None:
    first, rest = icap_head + http + chunk(body) + b"0\r\n\r\n", None
elif len(body) <= preview:
    first, rest = icap_head + http + chunk(body) + b"0; ieof\r\n\r\n", None
else:
    first = icap_head + http + chunk(body[:preview]) + b"0\r\n\r\n"
    rest = chunk(body[preview:]) + b"0\r\n\r\n"

counts = [[0, 0, 0] for _ in range(conns)]  # 204s, 200 echoes, errors


def answer(c):
    """(1, head) for a 204, (2, head) for a 200 echoing the body unchanged; raises otherwise."""
    head = c.until(b"\r\n\r\n")
    if head.startswith(b"ICAP/1.0 100"):
        if rest is None:
            raise ValueError("100 Continue after the whole body")
        c.s.sendall(rest)
        head = c.until(b"\r\n\r\n")
    if head.startswith(b"ICAP/1.0 204"):
        return 1, head
    if not head.startswith(b"ICAP/1.0 200"):
        raise ValueError(head.split(b"\r\n")[0])
    enc = [l for l in head.split(b"\r\n") if l.lower().startswith(b"encapsulated:")][0]
    parts = dict(p.strip().split(b"=") for p in enc.split(b":", 1)[1].split(b","))
    c.skip(int(parts[b"res-body"]))
    n = 0
    while True:
        size = int(c.until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            c.until(b"\r\n")
            break
        data = c.take_view(size)
        same = data == body_view[n:n + size]
        data.release()
        if not same:
            raise ValueError("echo differs")
        n += size
        c.skip(2)
    if n != len(body):
        raise ValueError("echo of %d bytes" % n)
    return 2, head


def worker(i):
    c = None
    while time.time() < end:
        try:
            if c is None:
                c = Conn()
            c.s.sendall(first)
            kind, head = answer(c)
            counts[i][kind - 1] += 1
            if b"connection: close" in head.lower():
                c.s.close()
                c = None
        except (OSError, ValueError, KeyError, IndexError):
            counts[i][2] += 1
            if c is not None:
                c.s.close()
            c = None
    if c is not None:
        c.s.close()


ts = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
start = time.time()
end = start + secs
for t in ts:
    t.start()
for t in ts:
    t.join()
print(sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts),
      "%.3f" % (time.time() - start))
