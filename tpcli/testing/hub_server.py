"""A local, fake Hugging Face Hub for tests: real HTTP, served from a dict or a folder.

Why: the code that pulls from the Hub (GLUE data, zoo checkpoints) must be tested against what
`huggingface_hub` really does on the wire (HEAD for metadata, ranged GETs to resume, a cache keyed
by commit), without the network and without mocking `huggingface_hub` itself. `HubServer` answers
the endpoints the installed `huggingface_hub` (2.x, httpx2 transport) calls:

- `GET /api/{models,datasets}/{repo}[/revision/{rev}]`: JSON with `id`, `sha`, `siblings`
  (`rfilename`, `size`, `blobId`, `lfs` {sha256, size, pointerSize}); `repo_info`.
- `GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]?recursive=`: file and directory entries
  (`list_repo_tree`, `list_repo_files`, `snapshot_download`).
- `HEAD` / `GET /{repo}/resolve/{rev}/{path}` and `/datasets/{repo}/resolve/{rev}/{path}`:
  `X-Repo-Commit`, `ETag` (the git blob sha1, or the sha256 for an LFS file, which also gets
  `X-Linked-Etag` and `X-Linked-Size`), `Content-Length`, `Accept-Ranges`; `Range: bytes=a-b`
  answers 206 with `Content-Range`. Files are served directly (no CDN redirect).
- Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so that
  `huggingface_hub` raises its usual exception types.
- `require_token(repo_id, token)`: that repo answers 401 unless the request carries
  `Authorization: Bearer <token>`: no token gives `X-Error-Code: GatedRepo` (`GatedRepoError`,
  a `RepositoryNotFoundError`), a wrong one the Hub's "Invalid credentials" message
  (`HfHubHTTPError`). `auth_seen` lists the `Authorization` header of every request.

Faults for tests: `drop_connection(path, after_bytes)` closes the socket mid-body (the client sees
an incomplete body and resumes with a Range request), `corrupt(path)` serves bytes of the right
size but the wrong content, and `count(...)` / `requests` tell how often each path was asked for.
The lifecycle, counters and faults are `tpcli.testing.file_server.LocalServer`, shared with `FileServer`.

Pointing `huggingface_hub` at the server. `HF_ENDPOINT` and `HF_HUB_OFFLINE` are read once, when
`huggingface_hub.constants` is imported, and the URL template of `hf_hub_url` is built from the
endpoint at that moment; so setting the environment variable inside a test does nothing. Either

1. pass `endpoint=server.url` to every call (`hf_hub_download`, `snapshot_download`, `HfApi`);
   the most explicit, and enough when the code under test takes an endpoint; or
2. wrap the code under test in `with server.activate():`, which patches, for the duration,
   `constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE`, `constants.HF_HUB_OFFLINE`
   (tests run with `HF_HUB_OFFLINE=1`), the default `HfApi` instance behind the module-level
   helpers, and the `HF_ENDPOINT` / `HF_HUB_OFFLINE` environment variables for subprocesses.
   Process-global: do not run two activated servers at once in one process.

Always give the download a fresh `cache_dir` (pytest's `tmp_path`) so that tests never share or
touch the user's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tpcli.testing.file_server import LocalServer, QuietHandler, send_body

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".parquet", ".arrow", ".h5", ".msgpack",
                ".onnx", ".gguf", ".model", ".zip", ".gz")
_TYPES = {"models": "model", "datasets": "dataset"}


@dataclass(frozen=True)
class HubFile:
    """One file of a commit; LFS files are described by their sha256, others by a git blob id."""

    data: bytes
    lfs: bool

    @cached_property  # every request reads it: hash once
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def blob_id(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


@dataclass
class _Repo:
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class HubServer(LocalServer):
    """A fake Hub on 127.0.0.1 (a free port), in a background thread.

    `repos` maps a repo key to its files: `"org/model"` is a model repo and
    `"datasets/org/name"` a dataset repo (the Hub's URL spelling). Use as a context manager,
    or `start()` / `stop()`.
    """

    name = "hub-server"

    def __init__(self, repos: Mapping[str, Mapping[str, bytes | str]] | None = None) -> None:
        super().__init__()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._tokens: dict[tuple[str, str], tuple[str, str]] = {}  # repo -> (token, error code)
        for key, files in (repos or {}).items():
            kind, _, repo_id = key.partition("/") if key.startswith("datasets/") else ("", "", key)
            self.add_repo(repo_id, files, repo_type="dataset" if kind else "model")

    # -- content --------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: Mapping[str, bytes | str], *, repo_type: str = "model",
                 refs: tuple[str, ...] = ("main",), lfs: set[str] | None = None,
                 sha: str | None = None) -> str:
        """Add a commit holding `files` (path -> content) and point `refs` at it; returns its
        sha (`sha`: serve it under this commit id, e.g. a real one a card pins). Calling again
        for the same repo adds a newer commit (older ones stay reachable by sha, as pinned
        revisions on the Hub). LFS: paths in `lfs`, else by suffix."""
        if repo_type not in _TYPES.values():
            raise ValueError(f"repo_type must be 'model' or 'dataset', not {repo_type!r}")
        commit: dict[str, HubFile] = {}
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else bytes(content)
            is_lfs = path in lfs if lfs is not None else path.endswith(LFS_SUFFIXES)
            commit[path.strip("/")] = HubFile(data, is_lfs)
        listing = sorted((p, f.etag) for p, f in commit.items())
        sha = sha or hashlib.sha1(json.dumps([repo_type, repo_id, listing]).encode()).hexdigest()
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            repo.commits[sha] = commit
            repo.refs.update({ref: sha for ref in refs})
        return sha

    def add_folder(self, repo_id: str, folder: str | Path, *, repo_type: str = "model",
                   refs: tuple[str, ...] = ("main",), sha: str | None = None) -> str:
        """Add every file under `folder` (relative paths, `/`-separated) as one commit."""
        root = Path(folder)
        files = {p.relative_to(root).as_posix(): p.read_bytes()
                 for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, repo_type=repo_type, refs=refs, sha=sha)

    @contextmanager
    def activate(self) -> Iterator[str]:
        """Point `huggingface_hub` (this process and its subprocesses) at this server."""
        from huggingface_hub import constants, hf_api

        names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE")
        saved = {n: getattr(constants, n) for n in names}
        saved_api = hf_api.api.endpoint
        saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE")}
        constants.ENDPOINT = self.url
        template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HUGGINGFACE_CO_URL_TEMPLATE = template
        constants.HF_HUB_OFFLINE = False
        hf_api.api.endpoint = self.url
        os.environ.update(HF_ENDPOINT=self.url, HF_HUB_OFFLINE="0")
        try:
            yield self.url
        finally:
            for n, v in saved.items():
                setattr(constants, n, v)
            hf_api.api.endpoint = saved_api
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # -- auth -----------------------------------------------------------------------------
    def require_token(self, repo_id: str, token: str | None, repo_type: str = "model", *,
                      error_code: str = "GatedRepo") -> None:
        """Make `repo_id` answer 401 unless `Authorization: Bearer <token>` (None: open again).
        Without a token the 401 carries `X-Error-Code: error_code` ("GatedRepo": a gated repo,
        `GatedRepoError`; "RepoNotFound": a private one, `RepositoryNotFoundError`); with a
        wrong token it says "Invalid credentials in Authorization header", as the Hub does."""
        key = (repo_type, repo_id)
        if token is None:
            self._tokens.pop(key, None)
        else:
            self._tokens[key] = (token, error_code)

    # -- lookups used by the handler ------------------------------------------------------
    def _lookup(self, repo_type: str, repo_id: str, rev: str, auth: str | None
                ) -> tuple[int, str, str, str | None, dict[str, HubFile] | None]:
        """(status, error code, error message, commit sha, files) for a repo at a revision."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return 404, "RepoNotFound", f"{repo_type} {repo_id} not found", None, None
            token, code = self._tokens.get((repo_type, repo_id), (None, ""))
            if token is not None and auth != f"Bearer {token}":
                if auth:
                    return 401, "", "Invalid credentials in Authorization header", None, None
                return 401, code, f"Access to {repo_type} {repo_id} is restricted.", None, None
            sha = repo.refs.get(rev, rev if rev in repo.commits else None)
            if sha is None:
                return 404, "RevisionNotFound", f"{repo_id}@{rev} not found", None, None
            return 200, "", "", sha, repo.commits[sha]


def _tree(files: dict[str, HubFile], under: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree entries below `under` (the Hub's JSON shape: type, oid, size, path, lfs)."""
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, f in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            folder = prefix + "/".join(parts[:depth])
            if depth == 1 or recursive:
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
        if len(parts) == 1 or recursive:
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(f.data),
                                     "oid": f.blob_id}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
            entries[path] = entry
    return list(entries.values())


def _siblings(files: dict[str, HubFile]) -> list[dict[str, Any]]:
    out = []
    for path, f in sorted(files.items()):
        s: dict[str, Any] = {"rfilename": path, "size": len(f.data), "blobId": f.blob_id}
        if f.lfs:
            s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
        out.append(s)
    return out


class _Handler(QuietHandler):
    """Routes one request to the API or resolve answer; `owner` is the bound `HubServer`."""

    owner: HubServer

    def route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.owner._record(method, path, self.headers.get("Range"),
                           self.headers.get("Authorization"))
        if url.path.startswith("/api/"):
            self._api(url.path[len("/api/"):], parse_qs(url.query), method)
        elif "/resolve/" in url.path:
            self._resolve(url.path, method)
        else:
            self._error(404, "RepoNotFound", f"no route for {path}")

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, method: str) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _api(self, rest: str, query: dict[str, list[str]], method: str) -> None:
        kind, _, rest = rest.partition("/")
        repo_type = _TYPES.get(kind)
        if repo_type is None:
            return self._error(404, "RepoNotFound", f"unknown API {kind!r}")
        op, rev, under = "info", "main", ""
        for marker in ("/revision/", "/tree/"):
            if marker in rest:
                rest, _, tail = rest.partition(marker)
                rev_q, _, under = tail.partition("/")
                op, rev, under = marker.strip("/"), unquote(rev_q), unquote(under)
        repo_id = unquote(rest)
        auth = self.headers.get("Authorization")
        status, code, message, sha, files = self.owner._lookup(repo_type, repo_id, rev, auth)
        if files is None or sha is None:
            return self._error(status, code, message)
        if op == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(_tree(files, under, recursive), method)
        private = (repo_type, repo_id) in self.owner._tokens
        self._json({"id": repo_id, "sha": sha, "private": private,
                    "siblings": _siblings(files)}, method)

    def _resolve(self, raw_path: str, method: str) -> None:
        repo_type, rest = "model", raw_path.lstrip("/")
        if rest.startswith("datasets/"):
            repo_type, rest = "dataset", rest[len("datasets/"):]
        repo_q, _, tail = rest.partition("/resolve/")
        rev_q, _, file_q = tail.partition("/")
        repo_id, rev, path = unquote(repo_q), unquote(rev_q), unquote(file_q)
        auth = self.headers.get("Authorization")
        status, code, message, sha, files = self.owner._lookup(repo_type, repo_id, rev, auth)
        if files is None or sha is None:
            return self._error(status, code, message)
        f = files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} not in {repo_id}@{rev}", sha)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.etag}"'}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
        send_body(self, f.data, headers, self.owner._take_fault(path) if method == "GET" else None)


HubServer.handler = _Handler  # set here: the handler class is defined below the server


def private_zoo(folder: Path, monkeypatch: Any) -> tuple[Path, Path, Path]:
    """A test's own TP_HOME, Hugging Face cache and card folder under `folder` (created), with no
    token and tp's offline switch off: (home, hf_cache, cards). `monkeypatch` is pytest's; the
    cache constant `huggingface_hub` read at import is patched too."""
    from huggingface_hub import constants

    home, hf_cache, cards = folder / "tp-home", folder / "hf-cache", folder / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    for name, path in (("TP_HOME", home), ("HF_HUB_CACHE", hf_cache), ("TP_ZOO_CARDS", cards)):
        monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("TP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(folder / "no-token"))
    return home, hf_cache, cards
