"""Reads the whole request body and returns its length."""


def app(environ, start_response):
    stream = environ["wsgi.input"]
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        remaining = 0
    total = 0
    while remaining > 0:
        block = stream.read(min(remaining, 65536))
        if not block:
            break
        total += len(block)
        remaining -= len(block)
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
