"""An ordinary Falcon 4 app (nothing ferricorn-specific), for
tests/test_frameworks.py: resources with req.media/resp.media, a bounded
stream read of a (chunked) upload, a generator stream, a file through
resp.set_stream (Falcon hands it to wsgi.file_wrapper), cookies, Falcon's
HTTP errors and its default handler for an unexpected exception."""
import hashlib
import os

import falcon

DATA_FILE = os.environ.get("FALCON_DATA_FILE")


class Things:
    def on_get(self, req, resp, thing_id):
        resp.media = {
            "id": thing_id,
            "params": req.params,
            "header": req.get_header("X-Custom"),
            "uri": req.uri,
            "scheme": req.scheme,
            "forwarded_scheme": req.forwarded_scheme,
            "remote_addr": req.remote_addr,
            "access_route": req.access_route,
            "content_length": req.content_length,
        }

    def on_post(self, req, resp, thing_id):
        resp.status = falcon.HTTP_201
        resp.media = {"id": thing_id, "received": req.get_media()}


class Upload:
    def on_post(self, req, resp):
        h = hashlib.sha256()
        n = 0
        while True:
            block = req.bounded_stream.read(65536)
            if not block:
                break
            h.update(block)
            n += len(block)
        resp.media = {"size": n, "sha256": h.hexdigest()}


class Stream:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = (f"row {i}\n".encode() for i in range(1000))


class File:
    def on_get(self, req, resp):
        resp.content_type = "application/octet-stream"
        resp.set_stream(open(DATA_FILE, "rb"), os.path.getsize(DATA_FILE))


class Cookie:
    def on_get(self, req, resp):
        resp.text = f"cookie was {req.cookies.get('c')}"
        resp.set_cookie("c", "v2", secure=False, http_only=True)
        resp.set_cookie("d", "x", secure=False)


class Invalid:
    def on_get(self, req, resp):
        raise falcon.HTTPBadRequest(title="Bad thing", description="the thing was bad")


class Boom:
    def on_get(self, req, resp):
        raise ZeroDivisionError("falcon resource failed: secret detail")


app = falcon.App()
app.add_route("/things/{thing_id}", Things())
app.add_route("/upload", Upload())
app.add_route("/stream", Stream())
app.add_route("/file", File())
app.add_route("/cookie", Cookie())
app.add_route("/invalid", Invalid())
app.add_route("/boom", Boom())
