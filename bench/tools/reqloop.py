"""Sends COUNT sequential GET requests from one client, keeping the connection
alive where the server allows it (http.client reopens when the server closes).

usage: reqloop.py HOST PORT PATH COUNT
Prints "ok=N bad=M" and exits 0 when every response was 200.
"""

import http.client
import sys


def main():
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    conn = http.client.HTTPConnection(host, port, timeout=120)
    ok = bad = 0
    for _ in range(count):
        try:
            conn.request("GET", path, headers={"Host": "bench"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                ok += 1
            else:
                bad += 1
            if resp.will_close:
                conn.close()
        except (OSError, http.client.HTTPException):
            bad += 1
            conn.close()
    print("ok=%d bad=%d" % (ok, bad), flush=True)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
