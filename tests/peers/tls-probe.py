#!/usr/bin/env python3
"""tls-probe.py PORT CERTDIR : what a TLS ICAP client sees from stunnel (mTLS) per case.

For TLS 1.3 and 1.2, with no client cert / the right one / one from an unrelated CA:
handshake, send an OPTIONS request, read the answer; print where it failed and how.
"""
import socket, ssl, sys

port, certs = int(sys.argv[1]), sys.argv[2]
REQ = b"OPTIONS icap://127.0.0.1/echo ICAP/1.0\r\nHost: 127.0.0.1\r\nEncapsulated: null-body=0\r\n\r\n"

def case(ver, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs + "/ca.pem")
    ctx.minimum_version = ctx.maximum_version = ver
    if cert:
        ctx.load_cert_chain(certs + "/" + cert + ".pem", certs + "/" + cert + ".key")
    stage = "connect"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            stage = "handshake"
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                stage = "write"
                s.sendall(REQ)
                stage = "read"
                data = s.recv(65536)
                if not data:
                    return "%s: clean EOF (no data)" % stage
                return "OK: %r" % data.split(b"\r\n")[0]
    except ssl.SSLError as e:
        return "%s: SSLError %s" % (stage, e.reason or e)
    except OSError as e:
        return "%s: %s" % (stage, e)

for name, ver in (("TLS1.3", ssl.TLSVersion.TLSv1_3), ("TLS1.2", ssl.TLSVersion.TLSv1_2)):
    for cert in (None, "client", "wrong-client"):
        print("%-6s %-13s -> %s" % (name, cert or "no-cert", case(ver, cert)))
