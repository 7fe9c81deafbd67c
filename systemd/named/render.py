#!/usr/bin/env python3
"""Reference implementation of the substitution done by `ferricorn systemd-units`.

    render.py NAME --config FILE [--listen ADDR]... [--user U] [--group G]
              [--ferricorn PATH] [--output-dir DIR|-]

See README.md beside this file. The tests use it to check the templates; the
real thing is the subcommand in the binary.
"""
import argparse
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def listen_stream(value: str) -> str:
    if value.startswith("unix:"):
        value = value[len("unix:"):]
    if value.startswith("/"):
        return value
    if re.fullmatch(r"\d+", value) or re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):\d+", value):
        return value
    raise ValueError(f"not an address for ListenStream=: {value!r}")


def render(name: str, config: str, listen: list[str], user: str = "_ferricorn",
           group: str | None = None, ferricorn: str = "/usr/bin/ferricorn") -> dict[str, str]:
    if not re.fullmatch(r"[A-Za-z0-9:_.\\][A-Za-z0-9:_.\\-]*", name):
        raise ValueError(f"not a valid unit name: {name!r}")
    streams = [listen_stream(x) for x in listen] or [f"/run/ferricorn/{name}.sock"]
    values = {
        "@NAME@": name,
        "@CONFIG@": os.path.abspath(config),
        "@FERRICORN@": ferricorn,
        "@USER@": user,
        "@GROUP@": group or user,
        "@LISTEN_STREAMS@": "\n".join(f"ListenStream={s}" for s in streams),
    }
    out = {}
    for kind in ("socket", "service"):
        text = (HERE / f"NAME.{kind}.in").read_text()
        for k, v in values.items():
            text = text.replace(k, v)
        leftover = re.findall(r"@[A-Z_]+@", text)
        if leftover:
            raise ValueError(f"unreplaced placeholders in NAME.{kind}.in: {leftover}")
        out[f"{name}.{kind}"] = text
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--config", required=True)
    ap.add_argument("--listen", action="append", default=[])
    ap.add_argument("--user", default="_ferricorn")
    ap.add_argument("--group")
    ap.add_argument("--ferricorn", default="/usr/bin/ferricorn")
    ap.add_argument("--output-dir", default="/etc/systemd/system")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    units = render(a.name, a.config, a.listen, a.user, a.group, a.ferricorn)
    if a.output_dir == "-":
        for fname, text in units.items():
            sys.stdout.write(f"# {fname}\n{text}")
        return 0
    for fname, text in units.items():
        p = Path(a.output_dir) / fname
        if p.exists() and not a.force:
            print(f"{p} exists (use --force)", file=sys.stderr)
            return 1
        p.write_text(text)
        print(p)
    print(f"systemctl daemon-reload && systemctl enable --now {a.name}.socket")
    return 0


if __name__ == "__main__":
    sys.exit(main())
