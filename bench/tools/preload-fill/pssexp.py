import sys, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import harness
mods = sys.argv[1].split(",")
servers = sys.argv[2].split(",") if len(sys.argv) > 2 else ["ferricorn"]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
class O: pass
harness.prepare() if hasattr(harness, "prepare") else None
for mod in mods:
    app, cwd, path, meth, chk = harness.APPS_DEF["django"]
    harness.APPS_DEF["django"] = (mod + ":application", cwd, path, meth, chk)
    for srv in servers:
        vals = []
        for _ in range(n):
            r = harness.run_django_pss(srv, O(), True)
            vals.append(r.get("pss_mb"))
            note = r.get("note") or r.get("fail")
        print(mod, srv, vals, "median", statistics.median([v for v in vals if v]), note, flush=True)
