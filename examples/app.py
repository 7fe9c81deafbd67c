"""The bundled example: a plain WSGI app with no dependencies.

Run it with `./run-example` (README) or `ferricorn --chdir examples app:app`.
"""
import json


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/json":
        body = json.dumps({"hello": "world", "server": environ["SERVER_SOFTWARE"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/echo" and environ["REQUEST_METHOD"] == "POST":
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app
