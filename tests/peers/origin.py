#!/usr/bin/env python3
"""origin.py PORT DIR : loopback HTTP/1.1 origin for squid tests.
GET serves files from DIR (http.server); POST/PUT read the body and answer
"received N bytes\n" as text/plain. Keep-alive capable. Binds 127.0.0.1 only."""
import functools, http.server, sys

class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = b"received %d bytes\n" % len(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_PUT = do_POST
    def log_message(self, fmt, *a):
        sys.stderr.write("origin: " + (fmt % a) + "\n")

port, root = int(sys.argv[1]), sys.argv[2]
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(H, directory=root))
srv.serve_forever()
