"""An ordinary Pyramid app (nothing ferricorn-specific), for
tests/test_frameworks.py: views found by `config.scan()`, the json renderer,
WebOb request bodies (form, multipart, JSON, a chunked raw body), an
app_iter response, HTTP exceptions and an exception view."""
import hashlib

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound, HTTPNotFound
from pyramid.response import Response
from pyramid.view import exception_view_config, view_config


class Teapot(Exception):
    pass


@view_config(route_name="home")
def home(request):
    return Response("Hello from Pyramid", content_type="text/plain")


@view_config(route_name="item", renderer="json", request_method="GET")
def item(request):
    return {
        "id": request.matchdict["id"],
        "params": request.GET.dict_of_lists(),
        "url": request.url,
        "application_url": request.application_url,
        "scheme": request.scheme,
        "remote_addr": request.remote_addr,
        "script_name": request.script_name,
        "path_info": request.path_info,
        "route_url": request.route_url("item", id="other"),
    }


@view_config(route_name="item", renderer="json", request_method="POST")
def item_post(request):
    request.response.status = 201
    return {"id": request.matchdict["id"], "received": request.json_body}


@view_config(route_name="form", renderer="json", request_method="POST")
def form(request):
    upload = request.POST.get("upload")
    data = upload.file.read() if upload is not None and hasattr(upload, "file") else None
    return {
        "name": request.POST.get("name"),
        "tags": request.POST.getall("tag"),
        "file": None if data is None else {"filename": upload.filename, "size": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()},
    }


@view_config(route_name="raw", renderer="json", request_method="POST")
def raw(request):
    # body_file reads wsgi.input; for a chunked request WebOb relies on
    # wsgi.input_terminated to read it to its end.
    h = hashlib.sha256()
    n = 0
    while True:
        block = request.body_file.read(65536)
        if not block:
            break
        h.update(block)
        n += len(block)
    return {"size": n, "sha256": h.hexdigest(), "content_length": request.content_length}


@view_config(route_name="stream")
def stream(request):
    return Response(app_iter=(f"row {i}\n".encode() for i in range(1000)), content_type="text/plain")


@view_config(route_name="go")
def go(request):
    return HTTPFound(location=request.route_url("item", id="redirected"))


@view_config(route_name="missing")
def missing(request):
    raise HTTPNotFound("no such thing")


@view_config(route_name="teapot")
def teapot(request):
    raise Teapot("short and stout")


@exception_view_config(Teapot, renderer="json")
def teapot_view(exc, request):
    request.response.status = 418
    return {"error": str(exc)}


@view_config(route_name="boom")
def boom(request):
    raise ZeroDivisionError("pyramid view failed: secret detail")


def make_app():
    with Configurator() as config:
        config.add_route("home", "/")
        config.add_route("item", "/items/{id}")
        config.add_route("form", "/form")
        config.add_route("raw", "/raw")
        config.add_route("stream", "/stream")
        config.add_route("go", "/go")
        config.add_route("missing", "/missing")
        config.add_route("teapot", "/teapot")
        config.add_route("boom", "/boom")
        config.scan(__name__)
        return config.make_wsgi_app()


app = make_app()
