"""1 MiB responses: `generated` (16 x 64 KiB chunks from a generator) and
`filewrap` (a 1 MiB file through environ['wsgi.file_wrapper'])."""

import os
import tempfile

SIZE = 1 << 20
CHUNK = 64 * 1024
_chunk = b"x" * CHUNK


def _data_file():
    path = os.environ.get("FERRICORN_BENCH_FILE") or os.path.join(
        tempfile.gettempdir(), "ferricorn-bench-1mib.bin")
    try:
        if os.path.getsize(path) == SIZE:
            return path
    except OSError:
        pass
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(os.urandom(SIZE))
    os.replace(tmp, path)
    return path


DATA_FILE = _data_file()


def generated(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(SIZE))])
    return (_chunk for _ in range(SIZE // CHUNK))


def _read_loop(f):
    try:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            yield block
    finally:
        f.close()


def filewrap(environ, start_response):
    f = open(DATA_FILE, "rb")
    headers = [("Content-Type", "application/octet-stream"),
               ("Content-Length", str(SIZE))]
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is None:
        # The server offers no file_wrapper: fall back and say so (the harness notes it).
        start_response("200 OK", headers + [("X-Bench-Fallback", "no-file-wrapper")])
        return _read_loop(f)
    start_response("200 OK", headers)
    return wrapper(f, CHUNK)
