"""Where the memory of a Django `--preload` server goes, page by page.

Starts a server the way the bench's django-pss-preload row does (2 workers,
the harness's sanity request, then 10 admin pages from each of 2 clients, or
none with --idle), then reads /proc/PID/pagemap of the master and workers:

- each physical page counted once, by who maps it (master only, one worker
  only, shared by all three...), anon or file-backed, by mapping;
- for every page a worker holds a private copy of (same address, another
  frame than the master's), the 8-byte words that differ from the master's
  original, and what they belong to: a pymalloc block (its type read from
  the object header: refcount, GC header, other field; or a block that is
  free in the master, so the worker allocated into it), a pool header, the
  glibc heap, a library's data. A page is then classed by its reasons:
  "identical" means the worker wrote it and put every word back (refcount
  up and down again), which only KSM could share again.

    bench/tools/preload-pages/pages.py ferricorn [--idle]
    bench/tools/preload-pages/pages.py gunicorn-sync

Needs root (pagemap frame numbers and /proc/PID/mem of other processes).
"""
import collections
import os
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import harness  # noqa: E402

PAGE = 4096
POOL = 16384  # CPython 3.10+ on 64-bit: 16 KiB pools (1 MiB arenas)
POOL_OVERHEAD = 48


def maps(pid):
    out = []
    for line in open("/proc/%d/maps" % pid):
        parts = line.split()
        a, b = (int(x, 16) for x in parts[0].split("-"))
        name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
        if name != "[vsyscall]":
            out.append((a, b, parts[1], name))
    return out


def frames(pid, a, b):
    with open("/proc/%d/pagemap" % pid, "rb") as f:
        f.seek(a // PAGE * 8)
        d = f.read((b - a) // PAGE * 8)
    return [(e & ((1 << 55) - 1)) if e >> 63 else None
            for e in struct.unpack("<%dQ" % (len(d) // 8), d)]


class Mem:
    def __init__(self, pid):
        self.f = open("/proc/%d/mem" % pid, "rb")
        self.types = {}

    def read(self, a, n):
        try:
            self.f.seek(a)
            return self.f.read(n)
        except (OSError, ValueError, OverflowError):
            return None

    def word(self, a):
        d = self.read(a, 8)
        return struct.unpack("<Q", d)[0] if d and len(d) == 8 else None

    def type_name(self, t):
        """tp_name of the type object at t, or None if t is not one."""
        if t in self.types:
            return self.types[t]
        name = None
        if t and t % 8 == 0:
            meta = self.word(t + 8)
            if meta and self.word(meta + 8) is not None:
                p = self.word(t + 24)
                s = (self.read(p, 64) or b"").split(b"\0")[0] if p else b""
                if 0 < len(s) < 64 and all(32 < c < 127 for c in s):
                    name = s.decode()
        self.types[t] = name
        return name

    def pymalloc(self, va):
        """(type or pseudo-type, field) of a word in a pymalloc pool, else None."""
        pool = va & ~(POOL - 1)
        h = self.read(pool, POOL_OVERHEAD)
        if not h or len(h) < POOL_OVERHEAD:
            return None
        count, _, _, _, _, szidx, nextoff, maxnext = struct.unpack("<IxxxxQQQIIII", h)
        if not (szidx < 32 and maxnext <= POOL and nextoff <= POOL + 512 and 0 < count <= POOL // 16):
            return None
        if va - pool < POOL_OVERHEAD:
            return ("pool header", "")
        size = (szidx + 1) * 16
        block = pool + POOL_OVERHEAD + (va - pool - POOL_OVERHEAD) // size * size
        for gc_head in (0, 16):
            name = self.type_name(self.word(block + gc_head + 8))
            if name:
                off = va - block - gc_head
                return (name, "refcnt" if off == 0 else "gc header" if off < 0 else "field")
        return ("free block", "")  # free in the master: the worker allocated here


def reason(master, name, va):
    if name not in ("[anon]", "[heap]"):
        return name  # a library's .data/.bss, the stack
    r = master.pymalloc(va)
    if r is None:
        return "glibc heap" if name == "[heap]" else "anon, not pymalloc"
    kind, field = r
    if kind in ("pool header", "free block") or field == "gc header":
        return "allocation"
    return "refcount" if field == "refcnt" else "object field"


def copied(m_pid, w_pid):
    """Words a worker changed in its private copies, and pages by reasons."""
    master, worker = Mem(m_pid), Mem(w_pid)
    # by start address: a worker's [heap] may have grown past the master's
    ends = {a: b for a, b, _, _ in maps(m_pid)}
    pages = collections.Counter()
    for a, b, perm, name in maps(w_pid):
        if "w" not in perm or a not in ends:
            continue
        b = min(b, ends[a])
        for i, (fw, fm) in enumerate(zip(frames(w_pid, a, b), frames(m_pid, a, b))):
            if fw is None or fm is None or fw == fm:
                continue
            va = a + i * PAGE
            dw, dm = worker.read(va, PAGE), master.read(va, PAGE)
            if not dw or not dm:
                continue
            ww, wm = struct.unpack("<512Q", dw), struct.unpack("<512Q", dm)
            why = {reason(master, name, va + j * 8) for j in range(512) if ww[j] != wm[j]}
            pages[" + ".join(sorted(why)) or "identical"] += 1
    return pages


def owners(pids):
    """Physical pages counted once, by which of the processes map them."""
    who = collections.defaultdict(set)
    what = {}
    for p in pids:
        for a, b, _, name in maps(p):
            for f in frames(p, a, b):
                if f is not None:
                    who[f].add(p)
                    what[f] = name
    anon = ("[anon]", "[heap]", "[stack]")
    out = collections.Counter()
    by_map = {"master only": collections.Counter(), "one worker only": collections.Counter()}
    for f, ps in who.items():
        if ps == {pids[0]}:
            cls = "master only"
        elif len(ps) == 1:
            cls = "one worker only"
        else:
            cls = "%d processes" % len(ps)
        out[(cls, "anon" if what[f] in anon else "file")] += 1
        if cls in by_map:
            by_map[cls][what[f]] += 1
    return out, by_map


def mb(pages):
    return pages * PAGE / 2**20


def main():
    server = sys.argv[1] if len(sys.argv) > 1 else "ferricorn"
    idle = "--idle" in sys.argv
    srv = harness.start_server(server, "django", 2, preload=True)
    try:
        if not idle:
            def client():
                for _ in range(10):
                    harness.http_get(srv.port, "/admin/login/", timeout=30)
            ts = [threading.Thread(target=client) for _ in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        time.sleep(0.3)
        pids = [srv.proc.pid] + [p for p in harness.descendants(srv.proc.pid)
                                 if "resource_tracker" not in harness.cmdline(p)]
        total = 0
        for p in pids:
            v = harness.smaps_rollup(p)
            total += v["Pss"]
            print("%-8s %d  Pss %.1f MB  Private_Dirty %.1f MB" % (
                "master" if p == pids[0] else "worker", p, v["Pss"] / 1024, v["Private_Dirty"] / 1024))
        print("total PSS %.1f MB (%s)" % (total / 1024, "idle" if idle else "after 20 admin pages"))
        cls, by_map = owners(pids)
        print("\nphysical pages by who maps them:")
        for k in sorted(cls):
            print("  %-16s %-4s %6.2f MB" % (k[0], k[1], mb(cls[k])))
        for k, c in by_map.items():
            print("  %s, by mapping: %s" % (k, ", ".join("%s %.2f" % (n, mb(v)) for n, v in c.most_common(8))))
        for w in pids[1:]:
            pages = copied(pids[0], w)
            print("\nworker %d: %.2f MB of private copies of the master's pages, by what changed:" % (
                w, mb(sum(pages.values()))))
            for k, v in pages.most_common(12):
                print("  %6.2f MB  %s" % (mb(v), k))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
