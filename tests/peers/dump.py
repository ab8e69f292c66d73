#!/usr/bin/env python3
"""dump.py FILE.bin... : summarise an ICAP byte stream (one direction of one connection).

For each ICAP message: start line, ICAP headers, the encapsulated HTTP start line(s),
the chunk sizes of the body (with extensions such as ieof), and continuation chunks
sent after a preview. Obs-folded lines are shown as they are. Bodies are not printed.
"""
import re, sys

def line(buf, i):
    j = buf.find(b"\r\n", i)
    if j < 0:
        raise EOFError
    return buf[i:j], j + 2

def head(buf, i):
    lines = []
    while True:
        l, i = line(buf, i)
        if l == b"":
            return lines, i
        lines.append(l)

def chunks(buf, i, out):
    desc = []
    while True:
        l, i = line(buf, i)
        size_s, _, ext = l.partition(b";")
        size = int(size_s.strip(), 16)
        if size == 0:
            _, i = line(buf, i)                  # empty trailer line
            desc.append("0" + (";" + ext.decode() if ext else ""))
            out.append("    chunks: " + " ".join(desc))
            return i, b"ieof" in ext
        desc.append("%d" % size)
        i += size + 2

def dump(path):
    buf = open(path, "rb").read()
    print("== %s (%d bytes)" % (path, len(buf)))
    i = 0
    while i < len(buf):
        out = []
        if re.match(rb"[0-9a-fA-F]+(;[^\r]*)?\r\n", buf[i:i + 40]):   # continuation after 100
            i, _ = chunks(buf, i, out)
            print("  (continuation after preview)"); print("\n".join(out)); continue
        try:
            lines, i = head(buf, i)
        except EOFError:
            print("  !! %d trailing bytes without CRLF: %r" % (len(buf) - i, buf[i:i + 60])); return
        print("  " + lines[0].decode("latin1"))
        enc = None
        for h in lines[1:]:
            print("      " + h.decode("latin1"))
            if h.lower().startswith(b"encapsulated:"):
                enc = [(k.strip(), int(v)) for k, v in
                       (p.split(b"=") for p in h.split(b":", 1)[1].split(b","))]
        if not enc:
            continue
        base = i
        for n, (k, off) in enumerate(enc):
            nxt = enc[n + 1][1] if n + 1 < len(enc) else None
            if k.endswith(b"-hdr") and nxt == off:
                print("    %s: EMPTY (zero-length section: next offset is the same)" % k.decode())
            elif k.endswith(b"-hdr"):
                hl, _ = head(buf, base + off)
                print("    %s: %s  (%d header lines)" % (k.decode(), hl[0].decode("latin1"), len(hl) - 1))
                i = max(i, _)
            elif k == b"null-body":
                i = base + off
            else:
                i, _ = chunks(buf, base + off, out)
        print("\n".join(out))

for p in sys.argv[1:]:
    dump(p)
