#!/usr/bin/env python3
"""Tiny TCP tee proxy for capturing wire bytes (loopback only).

    tee.py --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --out DIR [--name NAME]
           [--port-file FILE] [--max-conns N]

Every accepted connection N (1, 2, ...) is forwarded to the target; the bytes the
client sent are appended to DIR/NAME.N.request.bin and the bytes the server sent to
DIR/NAME.N.response.bin, exactly as read.  DIR/NAME.N.log lists every read with a
timestamp, direction (C>S / S>C) and size, and the EOF/half-close events, so the
interleaving (e.g. preview -> 100 Continue -> rest) can be seen.
A half-close is propagated (shutdown(SHUT_WR)).  Listening port 0 picks a free port;
--port-file receives the chosen port.  Stops after --max-conns connections have
finished (default: run until SIGTERM/SIGINT).
"""
import argparse, os, socket, sys, threading, time

def hostport(s):
    h, _, p = s.rpartition(":")
    if h not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise argparse.ArgumentTypeError("loopback addresses only")
    return (h.strip("[]"), int(p))

def pump(src, dst, path, log, tag, t0, lock):
    with open(path, "ab") as f:
        while True:
            try:
                data = src.recv(65536)
            except OSError as e:
                data = b""
                with lock:
                    log.write("%.6f %s error %s\n" % (time.monotonic() - t0, tag, e))
            if not data:
                with lock:
                    log.write("%.6f %s EOF\n" % (time.monotonic() - t0, tag)); log.flush()
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            f.write(data); f.flush()
            with lock:
                log.write("%.6f %s %d\n" % (time.monotonic() - t0, tag, len(data))); log.flush()
            try:
                dst.sendall(data)
            except OSError as e:
                with lock:
                    log.write("%.6f %s send-error %s\n" % (time.monotonic() - t0, tag, e)); log.flush()
                return

def handle(cli, n, args):
    base = os.path.join(args.out, "%s.%d" % (args.name, n))
    for suffix in (".request.bin", ".response.bin"):
        open(base + suffix, "wb").close()
    t0 = time.monotonic()
    lock = threading.Lock()
    with open(base + ".log", "w") as log:
        try:
            srv = socket.create_connection(args.target)
        except OSError as e:
            log.write("connect to target failed: %s\n" % e)
            cli.close(); return
        for s in (cli, srv):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a = threading.Thread(target=pump, args=(cli, srv, base + ".request.bin", log, "C>S", t0, lock))
        b = threading.Thread(target=pump, args=(srv, cli, base + ".response.bin", log, "S>C", t0, lock))
        a.start(); b.start(); a.join(); b.join()
        cli.close(); srv.close()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=hostport, default=("127.0.0.1", 0))
    ap.add_argument("--target", type=hostport, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="conn")
    ap.add_argument("--port-file")
    ap.add_argument("--max-conns", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(args.listen); ls.listen(16)
    port = ls.getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.rename(args.port_file + ".tmp", args.port_file)
    print("tee.py: 127.0.0.1:%d -> %s:%d" % (port, *args.target), file=sys.stderr, flush=True)
    threads, n = [], 0
    while not args.max_conns or n < args.max_conns:
        cli, _ = ls.accept()
        n += 1
        t = threading.Thread(target=handle, args=(cli, n, args), daemon=True)
        t.start(); threads.append(t)
    ls.close()
    for t in threads:
        t.join()

if __name__ == "__main__":
    main()
