"""A Flask JSON endpoint (GET /json)."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/json")
def json_endpoint():
    return jsonify(message="Hello, World!", items=[1, 2, 3], ok=True)
