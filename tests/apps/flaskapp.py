"""An ordinary Flask app (nothing ferricorn-specific), for
tests/test_frameworks.py."""
from flask import Flask, abort, jsonify, redirect, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask"


@app.get("/json")
def as_json():
    return jsonify(
        ok=True,
        args=request.args.to_dict(flat=False),
        scheme=request.scheme,
        host=request.host,
        url=request.url,
        remote_addr=request.remote_addr,
        path=request.path,
        script_root=request.script_root,
    )


@app.post("/json")
def echo_json():
    data = request.get_json()
    return jsonify(received=data, n=len(data.get("items", []))), 201


@app.post("/form")
def form():
    up = request.files.get("upload")
    return jsonify(
        name=request.form.get("name"),
        tags=request.form.getlist("tag"),
        file=None if up is None else {"filename": up.filename, "size": len(up.read())},
    )


@app.get("/user/<name>")
def user(name):
    return f"user {name}"


@app.get("/go")
def go():
    return redirect(url_for("user", name="redirected"))


@app.get("/stream")
def stream():
    def gen():
        for i in range(1000):
            yield f"row {i}\n"
    return app.response_class(stream_with_context(gen()), mimetype="text/plain")


@app.get("/forbidden")
def forbidden():
    abort(403)


@app.get("/boom")
def boom():
    raise ZeroDivisionError("flask view failed: secret detail")


@app.get("/cookie")
def cookie():
    resp = app.make_response(f"cookie was {request.cookies.get('c')}")
    resp.set_cookie("c", "v2", httponly=True)
    resp.set_cookie("d", "other")
    return resp
