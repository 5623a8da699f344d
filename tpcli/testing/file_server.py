"""A local static HTTP file server for tests, and the pieces it shares with `HubServer`.

Why: code that reads plain URLs (zoo checkpoints on a web server, fsspec's `http` filesystem)
must be tested against real HTTP: HEAD for the size, `Range` requests for seeks and resumes,
connections that die mid-body, bytes that arrive wrong, tokens that are missing. `FileServer`
serves a folder (read at request time, so a test may change a file between requests) or a
dict path -> bytes, on 127.0.0.1 in a background thread:

- `GET` / `HEAD /{path}`: `Content-Length`, `ETag` (sha1 of the content), `Last-Modified`,
  `Accept-Ranges: bytes`; `Range: bytes=a-b`, `bytes=a-`, `bytes=-n` answer 206 with
  `Content-Range`, an unsatisfiable range 416 with `Content-Range: bytes */size`; 404 if missing.
- `require_token(token)`: every request must carry `Authorization: Bearer <token>`, else 401
  (with `WWW-Authenticate: Bearer`); `auth_seen` lists the `Authorization` headers received.

Faults, as in `HubServer` (which imports `LocalServer`, `Fault`, `byte_range` and `send_body`
from here): `drop_connection(path, after_bytes)` closes the socket after that many body bytes,
`corrupt(path)` flips one byte (same size, wrong content), `count(...)` / `requests` / `ranges`
tell what was asked for.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit


@dataclass
class Fault:
    """One armed fault on a path: `kind` is "drop" (after `after` body bytes) or "corrupt"."""

    kind: str
    after: int
    remaining: int | None  # None: every time


def byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """(first, last) inclusive for `bytes=a-b`, `bytes=a-`, `bytes=-n`; None: unsatisfiable
    or malformed (both answer 416: the tests want a clear failure, not a silent 200)."""
    spec = (header or "").strip()
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first_s, _, last_s = spec[len("bytes="):].partition("-")
    if not (first_s or last_s) or not (first_s + last_s).isdigit():
        return None
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        return (max(total - n, 0), total - 1) if n > 0 and total else None
    first = int(first_s)
    last = min(int(last_s), total - 1) if last_s else total - 1
    return (first, last) if first <= last else None


def send_body(handler: BaseHTTPRequestHandler, data: bytes, headers: Mapping[str, str],
              fault: Fault | None) -> None:
    """Answer a GET/HEAD of `data` (honouring `Range`) with `headers` added, applying `fault`:
    "corrupt" flips the middle byte, "drop" closes the socket after `fault.after` body bytes."""
    total = len(data)
    if fault is not None and fault.kind == "corrupt" and total:
        mid = total // 2
        data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
    first, last, status = 0, total - 1, 200
    if handler.headers.get("Range"):
        span = byte_range(handler.headers["Range"], total)
        if span is None:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{total}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        (first, last), status = span, 206
    body = data[first:last + 1]
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("Content-Type", "application/octet-stream")
    if status == 206:
        handler.send_header("Content-Range", f"bytes {first}-{last}/{total}")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command == "HEAD":
        return
    if fault is not None and fault.kind == "drop":
        handler.wfile.write(body[:fault.after])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)  # the client sees an incomplete body
        return
    handler.wfile.write(body)


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler bound to its `LocalServer` as `owner`; logs nothing (tests
    read `owner.requests` instead)."""

    owner: Any
    protocol_version = "HTTP/1.1"  # every answer carries a Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:
        self.route("GET")

    def do_HEAD(self) -> None:
        self.route("HEAD")

    def route(self, method: str) -> None:
        raise NotImplementedError

    def plain(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        """A short text answer (errors)."""
        body = message.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class LocalServer:
    """Lifecycle, request log and fault registry shared by `FileServer` and `HubServer`.

    Subclasses set `handler` (a `QuietHandler` subclass) and `name`. Faults are keyed by a path
    without leading `/` (a file path in a repo for `HubServer`, the URL path for `FileServer`).
    """

    handler: ClassVar[type[QuietHandler]] = QuietHandler
    name: ClassVar[str] = "local-server"

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, url path) -> count
        self.ranges: list[tuple[str, str]] = []  # (url path, Range header) of ranged requests
        self.auth_seen: list[str | None] = []  # the Authorization header of every request
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- faults and counters --------------------------------------------------------------
    def drop_connection(self, path: str, after_bytes: int, times: int | None = 1) -> None:
        """Close the socket after `after_bytes` of the body of a GET of `path`, `times` times
        (None: always)."""
        self._faults[path.strip("/")] = Fault("drop", after_bytes, times)

    def corrupt(self, path: str, times: int | None = None) -> None:
        """Serve `path` with one byte flipped (same size, wrong content), `times` times."""
        self._faults[path.strip("/")] = Fault("corrupt", 0, times)

    def clear_faults(self) -> None:
        self._faults.clear()

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request to this server, no client logic in between (for tests of the
        wire format): status, lower-cased headers, body (a dropped body comes back short)."""
        import http.client

        conn = http.client.HTTPConnection(urlsplit(self.url).netloc, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            head = {k.lower(): v for k, v in resp.getheaders()}
            try:
                body = resp.read()
            except http.client.IncompleteRead as e:
                body = e.partial
            return resp.status, head, body
        finally:
            conn.close()

    def count(self, path_suffix: str = "", method: str | None = "GET") -> int:
        """Requests whose URL path ends with `path_suffix` (any method when `method` is None)."""
        with self._lock:
            return sum(n for (m, p), n in self.requests.items()
                       if p.endswith(path_suffix) and (method is None or m == method))

    def _record(self, method: str, path: str, range_header: str | None,
                authorization: str | None) -> None:
        with self._lock:
            self.requests[(method, path)] += 1
            self.auth_seen.append(authorization)
            if range_header:
                self.ranges.append((path, range_header))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(path.strip("/"))
            if fault is None or fault.remaining == 0:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1; returns self."""
        bound = type("_BoundHandler", (self.handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), bound)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _FileHandler(QuietHandler):
    owner: FileServer

    def route(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization")
        self.owner._record(method, path, self.headers.get("Range"), auth)
        token = self.owner._token
        if token is not None and auth != f"Bearer {token}":
            return self.plain(401, "a valid bearer token is required\n",
                              {"WWW-Authenticate": 'Bearer realm="tp-file-server"'})
        found = self.owner._read(path)
        if found is None:
            return self.plain(404, f"{path} not found\n")
        data, mtime = found
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Last-Modified": formatdate(mtime, usegmt=True)}
        send_body(self, data, headers, self.owner._take_fault(path) if method == "GET" else None)


class FileServer(LocalServer):
    """Static files on 127.0.0.1 (a free port), in a background thread.

    `files` is a folder (served live from disk) or a mapping of URL path (`"a/b.bin"`, no
    leading `/`) to content. Use as a context manager, or `start()` / `stop()`.
    """

    handler = _FileHandler
    name = "file-server"

    def __init__(self, files: str | Path | Mapping[str, bytes | str] | None = None) -> None:
        super().__init__()
        self._root: Path | None = None
        self._files: dict[str, bytes] = {}
        self._token: str | None = None
        self._born = time.time()  # Last-Modified of the in-memory files
        if isinstance(files, (str, Path)):
            self._root = Path(files).resolve()
        else:
            for path, content in (files or {}).items():
                self.add(path, content)

    def add(self, path: str, content: bytes | str) -> None:
        """Serve `content` at `/{path}` (in-memory; replaces an earlier one)."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        with self._lock:
            self._files[path.strip("/")] = data

    def require_token(self, token: str | None) -> None:
        """Answer 401 unless `Authorization: Bearer <token>` (None: open again)."""
        self._token = token

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def _read(self, url_path: str) -> tuple[bytes, float] | None:
        """(content, mtime) of a URL path, or None; never serves outside the folder."""
        key = url_path.strip("/")
        with self._lock:
            if key in self._files:
                return self._files[key], self._born
        if self._root is None or not key:
            return None
        target = (self._root / key).resolve()
        if not target.is_relative_to(self._root) or not target.is_file():
            return None
        return target.read_bytes(), target.stat().st_mtime
