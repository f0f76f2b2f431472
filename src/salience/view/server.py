"""The HTTP side of `salience view`: a read-only `ThreadingHTTPServer` over one study folder.

Routes (GET only): `/` and `/static/<asset>` (the page, shipped in the package), `/api/<query>` (JSON, or PNG
images), `/report.html` (the study's report with links to the explorer's views) and `/files/<path>` (a file
of the study folder; nothing outside it, symlinks included). A malformed query gets 400 with a message."""

from __future__ import annotations

import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from salience.view.study import BadRequest, NotFound, Study

ASSETS = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
STATIC = {"index.html", "app.js", "style.css"}
LINKS = (
    '<nav style="font:14px sans-serif;background:#223;color:#fff;padding:6px 12px">salience view: '
    '<a style="color:#9cf" href="/#table">every image</a> · <a style="color:#9cf" href="/#disagreement">'
    'disagreement</a> · <a style="color:#9cf" href="/#instability">instability</a> · '
    '<a style="color:#9cf" href="/#out-of-set">out-of-set images</a></nav>'
)
log = logging.getLogger("salience")


def _query(text: str) -> dict[str, str]:
    try:
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as err:
        raise BadRequest(f"query string: cannot be decoded ({err})") from None
    repeated = [k for k, v in pairs.items() if len(v) > 1]
    if repeated:
        raise BadRequest(f"{repeated[0]}: given more than once")
    return {k: v[0] for k, v in pairs.items()}


class Handler(BaseHTTPRequestHandler):
    study: Study
    quiet = False
    server_version = "salience-view"

    def do_GET(self) -> None:
        try:
            self._route()
        except BadRequest as err:
            self._json({"error": str(err)}, 400)
        except NotFound as err:
            self._json({"error": str(err)}, 404)
        except Exception as err:  # a message, never a traceback
            log.warning("salience view: %s: %s: %s", self.path, type(err).__name__, err)
            self._json({"error": f"{type(err).__name__}: {err}"}, 500)

    def _route(self) -> None:
        if not self._host_ok():
            raise BadRequest(f"Host {self.headers.get('Host')!r}: this server answers only to its own address")
        parts = urlsplit(self.path)
        try:
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("path: not UTF-8") from None
        params = _query(parts.query)
        api = {
            "/api/meta": lambda p: self.study.meta(),
            "/api/rows": self.study.rows,
            "/api/disagreement": self.study.disagreement,
            "/api/instability": self.study.instability,
            "/api/out-of-set": self.study.out_of_set,
            "/api/item": self.study.item,
        }
        if path in api:
            if path == "/api/meta" and params:
                raise BadRequest("meta takes no parameters")
            self._json(api[path](params))
        elif path == "/api/image.png":
            self._send(self.study.picture(params, "data"), "image/png")
        elif path == "/api/out-of-set.png":
            self._send(self.study.picture(params, "out_of_set"), "image/png")
        elif path in ("/", "/index.html"):
            self._send((ASSETS / "index.html").read_bytes(), TYPES[".html"])
        elif path.startswith("/static/") and path[8:] in STATIC:
            name = path[8:]
            self._send((ASSETS / name).read_bytes(), TYPES[Path(name).suffix])
        elif path == "/report.html":
            self._report()
        elif path.startswith("/files/"):
            self._file(path[7:])
        else:
            raise NotFound(f"{path}: no such page")

    def _host_ok(self) -> bool:
        """Bound to the loopback, answer only requests addressed to it (a guard against DNS rebinding)."""
        address = self.server.server_address
        bound = str(address[0]) if isinstance(address, tuple) else str(address)
        if bound not in ("127.0.0.1", "::1", "localhost"):
            return True
        host = re.sub(r":\d+$", "", self.headers.get("Host", ""))
        return host in ("127.0.0.1", "localhost", "[::1]")

    def _report(self) -> None:
        path = self.study.root / "report.html"
        if not path.is_file():
            raise NotFound("this study has no report.html (`salience report DIR` writes it)")
        text = path.read_text()
        text = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + LINKS, text, count=1)
        self._send(text.encode(), TYPES[".html"])

    def _file(self, rel: str) -> None:
        """A file of the study folder, resolved (symlinks followed) and refused unless inside it."""
        if "\x00" in rel or not rel:
            raise NotFound("no such file in the study folder")
        target = (self.study.root / rel).resolve()
        if not target.is_relative_to(self.study.root) or not target.is_file():
            raise NotFound(f"{rel}: no such file in the study folder")
        kind = TYPES.get(target.suffix, "text/plain; charset=utf-8" if target.suffix in (".csv", ".json") else None)
        self._send(target.read_bytes(), kind or "application/octet-stream")

    def _json(self, obj, status: int = 200) -> None:
        self._send(json.dumps(obj, allow_nan=False).encode(), "application/json", status)

    def _send(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def make_server(
    root: str | Path, host: str = "127.0.0.1", port: int = 8765, quiet: bool = False
) -> ThreadingHTTPServer:
    """A server for the study folder `root` (not yet serving: call `serve_forever`); port 0 picks a free one."""
    study = Study(root)
    study.warm()
    handler = type("StudyHandler", (Handler,), {"study": study, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
