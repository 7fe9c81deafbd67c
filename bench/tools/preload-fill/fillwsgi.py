import gc, os, sys, re, tempfile
from benchsite.wsgi import application
gc.collect()
def avail():
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2); os.dup2(f.fileno(), 2)
        try: sys._debugmallocstats()
        finally: os.dup2(saved, 2); os.close(saved)
        f.seek(0); txt = f.read().decode()
    out = {}
    for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", txt, re.M):
        out[int(m.group(2))] = int(m.group(5))
    return out
_fill = []
a = avail()
for size, n in a.items():
    if size < 48: continue
    blen = size - 33 - 15 + 0  # bytes object size 33+len rounded up to 16
    blen = size - 40
    for _ in range(n):
        _fill.append(b"\0" * blen if blen > 1 else bytes(blen))
b=avail()
print({k:(a[k],b[k]) for k in a if a[k]!=b[k]}, file=sys.stderr)
print("filled", sum(n for s, n in a.items() if s >= 48), "after", sum(avail().values()), file=sys.stderr)
