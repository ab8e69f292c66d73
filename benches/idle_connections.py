#!/usr/bin/env python3
"""Holds N idle keep-alive ICAP connections from one address, then sends one REQMOD on each.

Used by benches/idle_connections.sh. Phases, each reported on stdout as one line:
  connected  N connections opened (CONNECT_CONC at a time, each within CONNECT_TIMEOUT);
             the server's RSS once they have been idle for SETTLE seconds
  served     one REQMOD on every connection (REQUEST_CONC at a time, each answered within
             ANSWER_TIMEOUT): the statuses, the failures (no answer, closed), and the
             server's RSS once the connections have been idle again for SETTLE seconds
  held       how many of the served connections are still open afterwards
The server's RSS is the sum of VmRSS over the processes of group --pgid (c-icap forks).
"""

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time

HTTP = b"POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\nContent-Length: 12\r\n\r\n"
BODY = b"hello world\n"


def request(service: str) -> bytes:
    return (
        b"REQMOD icap://127.0.0.1/" + service.encode() + b" ICAP/1.0\r\nHost: 127.0.0.1\r\n"
        b"Allow: 204\r\nEncapsulated: req-hdr=0, req-body=" + str(len(HTTP)).encode()
        + b"\r\n\r\n" + HTTP + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
    )


def rss_kib(pgid: int) -> int:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    total = 0
    for pid in out.stdout.split():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def answer(reader: asyncio.StreamReader) -> int:
    """Reads one ICAP answer (head, and a chunked body when it has one); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    enc = [l for l in head.split(b"\r\n") if l.lower().startswith(b"encapsulated:")]
    if enc and b"-body=" in enc[0] and b"null-body" not in enc[0]:
        # Encapsulated heads, then chunks up to the last one.
        await reader.readuntil(b"\r\n\r\n")
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def soak(a, req: bytes) -> None:
    """N keep-alive connections each sending request after request for --soak seconds."""
    counts = collections.Counter()
    failures = collections.Counter()
    until = time.monotonic() + a.soak

    async def one():
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", a.port), a.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            failures["connect: " + e.__class__.__name__] += 1
            return
        while time.monotonic() < until:
            try:
                w.write(req)
                await w.drain()
                counts[await asyncio.wait_for(answer(r), a.answer_timeout)] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                failures[e.__class__.__name__] += 1
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", a.port)
                except OSError:
                    return
        w.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.n)))
    took = time.monotonic() - t0
    total = sum(counts.values())
    print(f"soak: {a.n} keep-alive connections for {took:.0f} s: {total} transactions "
          f"({total / took:.0f}/s), statuses {dict(counts)}, failed {sum(failures.values())} "
          f"{dict(failures)}; server RSS {rss_kib(a.pgid)} KiB", flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--service", default="reqmod")
    ap.add_argument("--pgid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--connect-conc", type=int, default=500)
    ap.add_argument("--request-conc", type=int, default=500)
    ap.add_argument("--connect-timeout", type=float, default=10)
    ap.add_argument("--answer-timeout", type=float, default=30)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--soak", type=float, default=0,
                    help="instead: N connections sending requests for this many seconds")
    a = ap.parse_args()
    req = request(a.service)
    if a.soak > 0:
        await soak(a, req)
        return

    conns = []
    connect_failed = collections.Counter()
    sem = asyncio.Semaphore(a.connect_conc)

    async def connect():
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a.port), a.connect_timeout
                )
                conns.append((r, w))
            except asyncio.TimeoutError:
                connect_failed["timeout"] += 1
            except OSError as e:
                connect_failed[e.__class__.__name__] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(connect() for _ in range(a.n)))
    took = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    print(f"connected {len(conns)} of {a.n} in {took:.1f} s (failed: {dict(connect_failed)}); "
          f"server RSS {rss_kib(a.pgid)} KiB", flush=True)

    statuses = collections.Counter()
    failures = collections.Counter()
    sem = asyncio.Semaphore(a.request_conc)
    open_after = []

    async def transact(r, w):
        async with sem:
            try:
                w.write(req)
                await w.drain()
                st = await asyncio.wait_for(answer(r), a.answer_timeout)
                statuses[st] += 1
                open_after.append((r, w))
            except asyncio.TimeoutError:
                failures["no answer in time"] += 1
            except asyncio.IncompleteReadError:
                failures["closed without an answer"] += 1
            except OSError as e:
                failures[e.__class__.__name__] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(transact(r, w) for r, w in conns))
    took = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    print(f"served {sum(statuses.values())} of {len(conns)} in {took:.1f} s "
          f"(statuses: {dict(statuses)}; failed: {dict(failures)}); "
          f"server RSS {rss_kib(a.pgid)} KiB", flush=True)

    # Still open: the server has not closed them (the reader saw no end of stream).
    still = sum(1 for r, _ in open_after if not r.at_eof() and r.exception() is None)
    print(f"held {still} of {len(open_after)} served connections still open", flush=True)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(1)
