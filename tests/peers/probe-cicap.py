#!/usr/bin/env python3
"""probe-cicap.py PORT : send hand-made requests to c-icap (echo service) and print the
first line of each answer (or "no answer"/"closed"). Each case on a fresh connection."""
import socket, sys

port = int(sys.argv[1])
H = b"Host: 127.0.0.1\r\n"
RES = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"          # 45 bytes
def respmod(last, data=b"4\r\nabcd\r\n", ver=b"ICAP/1.0", extra=b""):
    return (b"RESPMOD icap://127.0.0.1/echo " + ver + b"\r\n" + H + extra +
            b"Encapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(RES) + RES + data + last)
CASES = [
    ("plain RESPMOD, no Allow", respmod(b"0\r\n\r\n")),
    ("bare LF line ends", respmod(b"0\r\n\r\n").replace(b"\r\n", b"\n")),
    ("extension on data chunk", respmod(b"0\r\n\r\n", data=b"4;foo=bar\r\nabcd\r\n")),
    ("last chunk '0; ieof' without Preview", respmod(b"0; ieof\r\n\r\n")),
    ("last chunk '0;ieof' + Preview", respmod(b"0;ieof\r\n\r\n", extra=b"Preview: 4\r\n")),
    ("last chunk '0; IEOF' + Preview", respmod(b"0; IEOF\r\n\r\n", extra=b"Preview: 4\r\n")),
    ("last chunk '0; foo' + Preview", respmod(b"0; foo\r\n\r\n", extra=b"Preview: 4\r\n")),
    ("ICAP/2.0", respmod(b"0\r\n\r\n", ver=b"ICAP/2.0")),
    ("unknown method", b"FOO icap://127.0.0.1/echo ICAP/1.0\r\n" + H + b"Encapsulated: null-body=0\r\n\r\n"),
    ("OPTIONS obs-folded header", b"OPTIONS icap://127.0.0.1/echo ICAP/1.0\r\n" + H +
        b"X-Fold: a\r\n\tb\r\nEncapsulated: null-body=0\r\n\r\n"),
    ("no Encapsulated on RESPMOD", b"RESPMOD icap://127.0.0.1/echo ICAP/1.0\r\n" + H + b"\r\n"),
]
for name, req in CASES:
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(3)
    s.sendall(req)
    try:
        data = s.recv(65536)
        ans = data.split(b"\r\n")[0].decode("latin1") if data else "closed without answer"
    except socket.timeout:
        ans = "no answer within 3 s"
    except ConnectionResetError:
        ans = "connection reset"
    s.close()
    print("%-40s -> %s" % (name, ans))
