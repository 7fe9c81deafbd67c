"""Real frameworks from PyPI, unmodified, in a virtualenv (the test venv
made with /usr/bin/python3): a Flask app, a Django project created with
`django-admin startproject`, a Pyramid app and a Falcon app."""
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from conftest import APPS, VENV, Server
from wire import exchange, parse_responses, request_bytes


def have(module):
    return any(Path(VENV, "lib").glob(f"python3*/site-packages/{module}/__init__.py"))


def framework_server(module, name, app, *args):
    """Yield a 2-worker server of `app` from tests/apps, after checking that
    the framework's package `module` is in the test venv."""
    if not have(module):
        pytest.fail(f"{name} is not installed in {VENV} (tests/run installs it)")
    s = Server(["-b", "127.0.0.1:0", "--virtualenv", VENV, "-w", "2", *args, app], APPS, {})
    try:
        yield s
    finally:
        s.close()


# ---- Flask ------------------------------------------------------------------

@pytest.fixture(scope="module")
def flask_server():
    yield from framework_server("flask", "Flask", "flaskapp:app")


def test_flask_routes(flask_server):
    s = flask_server
    st, h, body = s.request("GET", "/")
    assert (st, body) == (200, b"Hello from Flask")
    assert h["content-type"].startswith("text/html")
    st, _, body = s.request("GET", "/user/ada")
    assert (st, body) == (200, b"user ada")
    st, h, _ = s.request("GET", "/go")
    assert st == 302 and h["location"].endswith("/user/redirected")


def test_flask_json(flask_server):
    s = flask_server
    st, h, body = s.request("GET", "/json?a=1&a=2&b=%C3%A9")
    assert st == 200 and h["content-type"] == "application/json"
    j = json.loads(body)
    assert j["args"] == {"a": ["1", "2"], "b": ["é"]}
    assert j["scheme"] == "http" and j["remote_addr"] == "127.0.0.1" and j["path"] == "/json"
    assert j["host"] == f"127.0.0.1:{s.port}"
    payload = {"items": list(range(100)), "name": "żółw"}
    st, _, body = s.request("POST", "/json", body=json.dumps(payload).encode(),
                            headers={"Content-Type": "application/json"})
    assert st == 201 and json.loads(body) == {"received": payload, "n": 100}
    # Behind a trusted proxy Flask sees https.
    st, _, body = s.request("GET", "/json", headers={"X-Forwarded-Proto": "https", "Host": "example.org"})
    assert json.loads(body)["url"] == "https://example.org/json"


def test_flask_form_post(flask_server):
    s = flask_server
    st, _, body = s.request("POST", "/form", body=b"name=Ada+L&tag=x&tag=y%21",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200 and json.loads(body) == {"name": "Ada L", "tags": ["x", "y!"], "file": None}
    # multipart with a file, sent chunked
    boundary = "b" + uuid.uuid4().hex
    filedata = bytes(range(256)) * 400
    parts = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmulti\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"f.bin\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + filedata + f"\r\n--{boundary}--\r\n".encode()
    c = s.conn()
    c.request("POST", "/form", body=iter([parts[i:i + 10000] for i in range(0, len(parts), 10000)]),
              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, encode_chunked=True)
    r = c.getresponse()
    assert r.status == 200
    assert json.loads(r.read()) == {"name": "multi", "tags": [], "file": {"filename": "f.bin", "size": len(filedata)}}
    c.close()


def test_flask_errors(flask_server):
    s = flask_server
    st, _, body = s.request("GET", "/no/such/page")
    assert st == 404 and b"Not Found" in body
    st, _, _ = s.request("GET", "/forbidden")
    assert st == 403
    st, _, _ = s.request("POST", "/")  # method not allowed
    assert st == 405
    st, _, body = s.request("GET", "/boom")
    assert st == 500 and b"secret detail" not in body
    log = s.wait_log(r"ZeroDivisionError: flask view failed")
    assert "Traceback" in log
    assert s.request("GET", "/")[0] == 200


def test_flask_streaming_and_cookies(flask_server):
    s = flask_server
    st, _, body = s.request("GET", "/stream")
    assert st == 200 and body == "".join(f"row {i}\n" for i in range(1000)).encode()
    c = s.conn()
    c.request("GET", "/cookie", headers={"Cookie": "c=v1"})
    r = c.getresponse()
    assert r.read() == b"cookie was v1"
    cookies = r.msg.get_all("Set-Cookie")
    assert len(cookies) == 2 and any(x.startswith("c=v2") and "HttpOnly" in x for x in cookies)
    c.close()


def test_flask_keepalive_and_head(flask_server):
    s = flask_server
    reqs = request_bytes("GET", "/") + request_bytes("HEAD", "/json") + request_bytes(
        "GET", "/user/x", [("Connection", "close")])
    ex = exchange(s.port, reqs)
    rs, rest = parse_responses(ex.data, ["GET", "HEAD", "GET"])
    assert [r.status for r in rs] == [200, 200, 200] and rest == b""
    assert rs[1].body == b"" and int(rs[1].header("content-length")) > 0
    assert rs[2].body == b"user x"


# ---- Pyramid ----------------------------------------------------------------

def multipart(fields, files):
    """A multipart/form-data body: (content_type, bytes)."""
    boundary = "b" + uuid.uuid4().hex
    out = b""
    for name, value in fields:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    for name, filename, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def chunked_post(s, path, data, piece=10000, headers=None):
    """POST `data` with Transfer-Encoding: chunked in `piece`-byte chunks."""
    c = s.conn()
    c.request("POST", path, body=iter([data[i:i + piece] for i in range(0, len(data), piece)]),
              headers=headers or {}, encode_chunked=True)
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


@pytest.fixture(scope="module")
def pyramid_server():
    yield from framework_server("pyramid", "Pyramid", "pyramidapp:app")


def test_pyramid_routes_and_json_renderer(pyramid_server):
    s = pyramid_server
    st, h, body = s.request("GET", "/")
    assert (st, body) == (200, b"Hello from Pyramid")
    assert h["content-type"] == "text/plain; charset=UTF-8"
    st, h, body = s.request("GET", "/items/7?a=1&a=2&b=%C3%A9")
    assert st == 200 and h["content-type"] == "application/json"
    j = json.loads(body)
    base = f"http://127.0.0.1:{s.port}"
    assert j == {"id": "7", "params": {"a": ["1", "2"], "b": ["é"]},
                 "url": f"{base}/items/7?a=1&a=2&b=%C3%A9", "application_url": base,
                 "scheme": "http", "remote_addr": "127.0.0.1", "script_name": "",
                 "path_info": "/items/7", "route_url": f"{base}/items/other"}
    st, _, body = s.request("POST", "/items/3", body=json.dumps({"k": [1, "ż"]}).encode(),
                            headers={"Content-Type": "application/json"})
    assert st == 201 and json.loads(body) == {"id": "3", "received": {"k": [1, "ż"]}}
    st, h, _ = s.request("GET", "/go")
    assert st == 302 and h["location"] == f"{base}/items/redirected"
    # Behind a trusted proxy (127.0.0.1 by default) the app's URLs say https.
    st, _, body = s.request("GET", "/items/8", headers={"X-Forwarded-Proto": "https", "Host": "example.org"})
    j = json.loads(body)
    assert j["scheme"] == "https" and j["url"] == "https://example.org/items/8"


def test_pyramid_request_bodies(pyramid_server):
    s = pyramid_server
    data = hashlib.sha256(b"seed").digest() * 12000  # 384000 bytes
    digest = hashlib.sha256(data).hexdigest()
    ctype, body = multipart([("name", "Ada"), ("tag", "x"), ("tag", "y")], [("upload", "f.bin", data)])
    st, _, out = s.request("POST", "/form", body=body, headers={"Content-Type": ctype})
    assert st == 200
    assert json.loads(out) == {"name": "Ada", "tags": ["x", "y"],
                               "file": {"filename": "f.bin", "size": len(data), "sha256": digest}}
    # The same form sent chunked.
    st, out = chunked_post(s, "/form", body, headers={"Content-Type": ctype})
    assert st == 200 and json.loads(out)["file"]["sha256"] == digest
    # A raw chunked body read through WebOb's body_file: all of it, no more.
    st, out = chunked_post(s, "/raw", data, piece=7777, headers={"Content-Type": "application/octet-stream"})
    assert st == 200
    j = json.loads(out)
    assert (j["size"], j["sha256"]) == (len(data), digest)
    st, _, out = s.request("POST", "/raw", body=data[:1000], headers={"Content-Type": "application/octet-stream"})
    assert json.loads(out) == {"size": 1000, "sha256": hashlib.sha256(data[:1000]).hexdigest(),
                               "content_length": 1000}


def test_pyramid_streaming_and_errors(pyramid_server):
    s = pyramid_server
    st, h, body = s.request("GET", "/stream")
    assert st == 200 and body == "".join(f"row {i}\n" for i in range(1000)).encode()
    st, _, body = s.request("GET", "/no/such/route")
    assert st == 404
    st, _, body = s.request("GET", "/missing")
    assert st == 404 and b"no such thing" in body
    st, _, body = s.request("POST", "/")
    assert st == 200  # the home view takes any method
    st, _, body = s.request("GET", "/teapot")
    assert st == 418 and json.loads(body) == {"error": "short and stout"}
    # An exception no view handles propagates out of the Pyramid app: the
    # server answers 500, logs the traceback and tells the client nothing.
    st, _, body = s.request("GET", "/boom")
    assert st == 500 and b"secret detail" not in body and b"Traceback" not in body
    log = s.wait_log(r"ZeroDivisionError: pyramid view failed")
    assert "Traceback" in log
    assert s.request("GET", "/")[0] == 200


# ---- Falcon -------------------------------------------------------------------

@pytest.fixture(scope="module")
def falcon_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("falcon") / "data.bin"
    path.write_bytes(hashlib.sha512(b"falcon").digest() * 5000)  # 320000 bytes
    return path


@pytest.fixture(scope="module")
def falcon_server(falcon_data):
    yield from framework_server("falcon", "Falcon", "falconapp:app", "-e", f"FALCON_DATA_FILE={falcon_data}")


def test_falcon_resources_and_media(falcon_server):
    s = falcon_server
    st, h, body = s.request("GET", "/things/7?a=1&a=2&b=%C3%A9", headers={"X-Custom": "hi there"})
    assert st == 200 and h["content-type"] == "application/json"
    j = json.loads(body)
    assert j == {"id": "7", "params": {"a": ["1", "2"], "b": "é"}, "header": "hi there",
                 "uri": f"http://127.0.0.1:{s.port}/things/7?a=1&a=2&b=%C3%A9", "scheme": "http",
                 "forwarded_scheme": "http", "remote_addr": "127.0.0.1",
                 "access_route": ["127.0.0.1"], "content_length": None}
    st, _, body = s.request("POST", "/things/9", body=json.dumps({"x": [1, 2]}).encode(),
                            headers={"Content-Type": "application/json"})
    assert st == 201 and json.loads(body) == {"id": "9", "received": {"x": [1, 2]}}
    st, _, body = s.request("GET", "/things/8", headers={"X-Forwarded-Proto": "https"})
    assert json.loads(body)["forwarded_scheme"] == "https"


def test_falcon_streams(falcon_server, falcon_data):
    s = falcon_server
    data = falcon_data.read_bytes()
    st, out = chunked_post(s, "/upload", data, piece=3333)
    assert st == 200
    j = json.loads(out)
    assert (j["size"], j["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    st, _, out = s.request("POST", "/upload", body=b"")
    assert st == 200 and json.loads(out)["size"] == 0
    st, _, body = s.request("GET", "/stream")
    assert st == 200 and body == "".join(f"row {i}\n" for i in range(1000)).encode()
    # resp.set_stream with a real file: Falcon hands it to wsgi.file_wrapper.
    st, h, body = s.request("GET", "/file")
    assert st == 200 and body == data and h["content-length"] == str(len(data))


def test_falcon_cookies_and_errors(falcon_server):
    s = falcon_server
    c = s.conn()
    c.request("GET", "/cookie", headers={"Cookie": "c=v1; other=z"})
    r = c.getresponse()
    assert r.read() == b"cookie was v1"
    cookies = r.msg.get_all("Set-Cookie")
    assert sorted(x.split(";")[0] for x in cookies) == ["c=v2", "d=x"]
    c.close()
    st, h, body = s.request("GET", "/invalid")
    assert st == 400 and json.loads(body) == {"title": "Bad thing", "description": "the thing was bad"}
    st, _, body = s.request("GET", "/nowhere")
    assert st == 404
    st, _, body = s.request("DELETE", "/stream")
    assert st == 405
    # Falcon's own handler turns an unexpected exception into its 500 and
    # logs the traceback through wsgi.errors, which reaches our log.
    st, _, body = s.request("GET", "/boom")
    assert st == 500 and b"secret detail" not in body
    log = s.wait_log(r"ZeroDivisionError: falcon resource failed")
    assert "Traceback" in log
    assert s.request("GET", "/stream")[0] == 200


# ---- the interpreter around the app ------------------------------------------

EXTENSIONS_APP = textwrap.dedent('''
    import json, os, subprocess, sys
    import multiprocessing

    def app(environ, start_response):
        out = {"executable": sys.executable}
        # C extension modules: the stdlib's lib-dynload ones, and one from a
        # wheel (MarkupSafe, installed with Flask). Neither links libpython:
        # they take the C API from the process, however ferricorn links it.
        import _ssl, _sqlite3, _ctypes, _decimal, _bz2, _lzma
        import markupsafe._speedups
        import ctypes, sqlite3
        out["sqlite"] = sqlite3.connect(":memory:").execute("select 6*7").fetchone()[0]
        out["ctypes"] = ctypes.pythonapi.Py_IsInitialized()
        out["speedups"] = markupsafe._speedups.__file__.endswith(".so")
        # what multiprocessing's spawn and subprocess start is a Python
        out["child"] = subprocess.run([sys.executable, "-c", "import sys; print(sys.prefix)"],
                                      capture_output=True, text=True, timeout=30).stdout.strip()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out["spawned"] = pool.apply(os.getpid) != os.getpid()
        body = json.dumps(out).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')


def test_c_extensions_and_sys_executable(tmp_path):
    """Extension modules import in a worker, and sys.executable is the venv's
    python (as under Gunicorn), so subprocess and multiprocessing's spawn work."""
    (tmp_path / "extapp.py").write_text(EXTENSIONS_APP)
    s = Server(["-b", "127.0.0.1:0", "--virtualenv", VENV, "-w", "1", "extapp:app"], tmp_path, {})
    try:
        st, _, body = s.request("GET", "/", timeout=60)
        assert st == 200, s.log()
        j = json.loads(body)
        assert Path(j["executable"]).parent == Path(VENV, "bin"), j
        assert j["child"] == str(VENV), j
        assert j["spawned"] is True
        assert (j["sqlite"], j["ctypes"], j["speedups"]) == (42, 1, True), j
        # a venv made by the embedded Python draws no warning about it
        assert "was made by the Python" not in s.log()
    finally:
        s.close()


def test_venv_of_another_python_installation_is_warned_about(tmp_path):
    """A venv of the embedded Python's version, made by another install of it
    (pyenv, /usr/local): served, with a warning naming both, since processes
    started from its python then run a foreign interpreter."""
    venv = tmp_path / "venv"
    site = venv / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    site.mkdir(parents=True)
    cfg = Path(VENV, "pyvenv.cfg").read_text()
    (venv / "pyvenv.cfg").write_text(
        re.sub(r"(?m)^home\s*=.*$", "home = /opt/other-python/bin", cfg))
    (tmp_path / "plain.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    s = Server(["-b", "127.0.0.1:0", "--virtualenv", str(venv), "-w", "2", "plain:app"], tmp_path, {})
    try:
        st, _, body = s.request("GET", "/")
        assert (st, body) == (200, b"ok"), s.log()
        s.wait_log(r"virtualenv .*venv was made by the Python in /opt/other-python/bin, "
                   r"not the one ferricorn embeds")
        # said once (by the first worker), not by every worker and respawn
        pid = s.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until and (len(s.worker_pids()) < 2 or pid in s.worker_pids()):
            time.sleep(0.05)
        assert s.request("GET", "/")[0] == 200
        assert s.log().count("was made by the Python in") == 1, s.log()
    finally:
        s.close()


# ---- Django -------------------------------------------------------------------

VIEWS = '''
import json
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


def hello(request):
    return HttpResponse("Hello from Django")


def info(request):
    return JsonResponse({
        "path": request.path,
        "path_info": request.path_info,
        "script_name": request.META.get("SCRIPT_NAME"),
        "method": request.method,
        "get": request.GET.dict(),
        "secure": request.is_secure(),
        "host": request.get_host(),
        "remote": request.META.get("REMOTE_ADDR"),
        "absolute": request.build_absolute_uri("/x"),
    })


@csrf_exempt
def echo(request):
    if request.content_type == "application/json":
        return JsonResponse({"json": json.loads(request.body)})
    return JsonResponse({"post": request.POST.dict(), "len": len(request.body)})


def stream(request):
    return StreamingHttpResponse((f"line {i}\\n" for i in range(2000)), content_type="text/plain")


def boom(request):
    raise KeyError("django view failed: secret detail")
'''

URLS_EXTRA = '''
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from mysite import views

urlpatterns += [
    path("hello/", views.hello),
    path("info/", views.info),
    path("echo/", views.echo),
    path("stream/", views.stream),
    path("boom/", views.boom),
]
urlpatterns += staticfiles_urlpatterns()
'''


@pytest.fixture(scope="module")
def django_project(tmp_path_factory):
    if not have("django"):
        pytest.fail(f"Django is not installed in {VENV} (tests/run installs it)")
    root = tmp_path_factory.mktemp("django")
    admin = Path(VENV, "bin", "django-admin")
    subprocess.run([str(admin), "startproject", "mysite", str(root)], check=True, timeout=60,
                   capture_output=True)
    (root / "mysite" / "views.py").write_text(VIEWS)
    urls = root / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + URLS_EXTRA)
    # The admin's pages need the auth/session tables.
    subprocess.run([str(Path(VENV, "bin", "python")), "manage.py", "migrate", "-v", "0"], cwd=root,
                   check=True, timeout=120, capture_output=True)
    return root


@pytest.fixture(scope="module")
def django_server(django_project):
    s = Server(["-b", "127.0.0.1:0", "--virtualenv", VENV, "--chdir", str(django_project),
                "-e", "DJANGO_SETTINGS_MODULE=mysite.settings", "-w", "2", "mysite.wsgi:application"],
               APPS, {}, timeout=30)
    try:
        yield s
    finally:
        s.close()


def test_django_view_and_json(django_server):
    s = django_server
    st, h, body = s.request("GET", "/hello/")
    assert (st, body) == (200, b"Hello from Django")
    st, _, body = s.request("GET", "/info/?q=%C3%A9&n=1")
    j = json.loads(body)
    assert j["path"] == "/info/" and j["get"] == {"q": "é", "n": "1"}
    assert j["secure"] is False and j["remote"] == "127.0.0.1"
    assert j["host"] == f"127.0.0.1:{s.port}"
    st, _, body = s.request("POST", "/echo/", body=b"a=1&b=%C3%A9",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert json.loads(body) == {"post": {"a": "1", "b": "é"}, "len": 12}
    st, _, body = s.request("POST", "/echo/", body=json.dumps({"k": [1, 2]}).encode(),
                            headers={"Content-Type": "application/json"})
    assert json.loads(body) == {"json": {"k": [1, 2]}}
    # Django reads only CONTENT_LENGTH: a chunked body still reaches it.
    st, body = chunked_post(s, "/echo/", json.dumps({"k": list(range(3000))}).encode(), piece=999,
                            headers={"Content-Type": "application/json"})
    assert st == 200 and json.loads(body) == {"json": {"k": list(range(3000))}}
    # wsgi.url_scheme from a trusted proxy makes request.is_secure() true.
    st, _, body = s.request("GET", "/info/", headers={"X-Forwarded-Proto": "https"})
    j = json.loads(body)
    assert j["secure"] is True and j["absolute"] == f"https://127.0.0.1:{s.port}/x"


def test_django_streaming(django_server):
    st, _, body = django_server.request("GET", "/stream/")
    assert st == 200 and body == "".join(f"line {i}\n" for i in range(2000)).encode()


def test_django_admin_login_page(django_server):
    s = django_server
    st, h, body = s.request("GET", "/admin/login/")
    assert st == 200 and h["content-type"].startswith("text/html")
    html = body.decode()
    assert "<title>Log in | Django site admin</title>" in html
    assert 'name="csrfmiddlewaretoken"' in html and 'name="username"' in html
    assert "csrftoken=" in h.get("set-cookie", "")
    # The admin redirects anonymous users to the login page.
    st, h, _ = s.request("GET", "/admin/")
    assert st == 302 and h["location"] == "/admin/login/?next=/admin/"
    # APPEND_SLASH: a permanent redirect to the slashed URL.
    st, h, _ = s.request("GET", "/admin")
    assert st == 301 and h["location"] == "/admin/"


def test_django_admin_login_post(django_server):
    # A full round-trip with the CSRF cookie: bad credentials -> the form again.
    s = django_server
    c = s.conn()
    c.request("GET", "/admin/login/")
    r = c.getresponse()
    html = r.read().decode()
    cookie = r.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    body = f"csrfmiddlewaretoken={token}&username=nobody&password=wrong&next=/admin/"
    c.request("POST", "/admin/login/", body=body.encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
        "Referer": f"http://127.0.0.1:{s.port}/admin/login/"})
    r = c.getresponse()
    out = r.read().decode()
    assert r.status == 200
    assert "Please enter the correct username and password" in out
    c.close()


def test_django_static_file(django_server):
    # Django's static view answers with a FileResponse -> wsgi.file_wrapper.
    css = next(Path(VENV, "lib").glob("python3*/site-packages/django/contrib/admin/static/admin/css/base.css"))
    st, h, body = django_server.request("GET", "/static/admin/css/base.css")
    assert st == 200 and body == css.read_bytes()
    assert h["content-length"] == str(len(body))
    assert h["content-type"].startswith("text/css")
    st, _, _ = django_server.request("GET", "/static/admin/css/nope.css")
    assert st == 404


def test_django_errors(django_server):
    s = django_server
    st, _, _ = s.request("GET", "/no/such/page/")
    assert st == 404
    st, _, body = s.request("GET", "/boom/")
    assert st == 500
    assert s.request("GET", "/hello/")[0] == 200


def test_django_behind_proxy_and_root_path(django_project, start_server):
    # SCRIPT_NAME from --root-path reaches Django's URL resolver.
    s = start_server("mysite.wsgi:application", "--virtualenv", VENV, "--chdir", str(django_project),
                     "-e", "DJANGO_SETTINGS_MODULE=mysite.settings", "--root-path", "/site", timeout=30)
    st, _, body = s.request("GET", "/site/info/")
    assert st == 200
    j = json.loads(body)
    assert j["path"] == "/site/info/" and j["path_info"] == "/info/" and j["script_name"] == "/site"
    st, h, _ = s.request("GET", "/site/admin/")
    assert st == 302 and h["location"] == "/site/admin/login/?next=/site/admin/"
