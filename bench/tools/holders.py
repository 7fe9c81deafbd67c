"""Holds connections open against a server while a load runs.

usage: holders.py idle|slowloris HOST PORT N

idle:      opens N connections, makes one keep-alive request on each, then leaves
           them idle. A connection the server closes is not reopened.
slowloris: opens N connections that send a never-ending request head, one byte
           per connection per second; a connection the server closes is reopened.

Prints "ready ..." once set up, then runs until SIGTERM/SIGINT and prints a
final "stats ..." line.
"""

import asyncio
import resource
import signal
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


class Stats:
    def __init__(self):
        self.open = 0
        self.failed = 0
        self.closed_by_server = 0
        self.reconnects = 0
        self.bytes_sent = 0


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head


async def idle_conn(host, port, stats, ready):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        await writer.drain()
        await asyncio.wait_for(read_response(reader), 30)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError, ValueError):
        stats.failed += 1
        ready()
        return
    stats.open += 1
    ready()
    try:
        await reader.read()  # returns when the server closes it
        stats.closed_by_server += 1
    except OSError:
        stats.closed_by_server += 1
    finally:
        stats.open -= 1
        writer.close()


async def slow_conn(host, port, stats, ready, idx):
    first = True
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats.failed += 1
            if first:
                ready()
                first = False
            await asyncio.sleep(1)
            continue
        stats.open += 1
        if first:
            ready()
            first = False
        head = b"GET / HTTP/1.1\r\nHost: bench\r\n"
        n = 0
        try:
            while True:
                if not head:
                    n += 1
                    head = b"X-Slow-%d-%d: %s\r\n" % (idx, n, b"a" * 16)
                writer.write(head[:1])
                head = head[1:]
                await writer.drain()
                stats.bytes_sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                    if not data:
                        break  # server closed
                except asyncio.TimeoutError:
                    pass
        except OSError:
            pass
        stats.open -= 1
        stats.closed_by_server += 1
        stats.reconnects += 1
        writer.close()


async def main():
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    raise_nofile()
    stats = Stats()
    done = 0
    all_ready = asyncio.Event()

    def ready():
        nonlocal done
        done += 1
        if done >= n:
            all_ready.set()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if mode == "idle":
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(idle_conn(host, port, stats, ready)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)
    elif mode == "slowloris":
        tasks = [asyncio.create_task(slow_conn(host, port, stats, ready, i)) for i in range(n)]
    else:
        print("unknown mode", mode, file=sys.stderr)
        return 2
    try:
        await asyncio.wait_for(all_ready.wait(), 60)
    except asyncio.TimeoutError:
        pass
    print("ready open=%d failed=%d" % (stats.open, stats.failed), flush=True)
    await stop.wait()
    print("stats open=%d failed=%d closed_by_server=%d reconnects=%d bytes=%d"
          % (stats.open, stats.failed, stats.closed_by_server, stats.reconnects,
             stats.bytes_sent), flush=True)
    for t in tasks:
        t.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
