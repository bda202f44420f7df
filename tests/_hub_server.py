"""A small Hugging Face Hub stand-in for tests: a real HTTP server on 127.0.0.1 speaking the parts of the Hub
API that ``huggingface_hub`` 2.x uses to create a repo, upload a folder and download it back.

Endpoints (model repos only; ``{repo}`` is ``owner/name``, ``{rev}`` a branch name or commit id):

- ``POST /api/repos/create``                   create a repo (409 if it exists; ``exist_ok`` is client-side)
- ``POST /api/validate-yaml``                  check a README.md's metadata (``upload_folder`` sends it first):
  YAML that parses, ``tags`` a list of strings, ``model-index`` results with the fields the Hub requires
- ``POST /api/models/{repo}/branch/{branch}``  create a branch (409 if it exists)
- ``POST /api/models/{repo}/preupload/{rev}``  upload modes: always ``"regular"`` (content travels inline in the
  commit, base64), so no LFS or Xet storage is involved
- ``POST /api/models/{repo}/commit/{rev}``     NDJSON commit: ``header``, ``file``, ``deletedFile``, ``deletedFolder``
- ``GET  /api/models/{repo}[/revision/{rev}]`` repo info (``sha``, ``siblings``)
- ``GET  /api/models/{repo}/tree/{rev}[/...]`` recursive file listing
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``    file metadata (``X-Repo-Commit``, ``ETag``) and content

Writes need ``Authorization: Bearer <token>`` with the server's token; a private repo needs it for reads too.
Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so
``huggingface_hub`` raises its usual exceptions. ``echo_auth_in_errors=True`` makes a 401 echo the received
Authorization header in its body, like a careless server would, to test that the token never leaks.

Everything is kept in memory; :meth:`LocalHub.files` and :meth:`LocalHub.export` read a revision back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


def git_blob_id(content: bytes) -> str:
    """Git's blob id (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]  # the whole tree at this commit
    changed: list[str]  # paths added or replaced by this commit


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class LocalHub:
    """``with LocalHub(token="hf_x") as hub: HfApi(endpoint=hub.endpoint, token="hf_x").create_repo(...)``."""

    def __init__(self, token: str | None = None, *, echo_auth_in_errors: bool = False) -> None:
        self.token = token
        self.echo_auth_in_errors = echo_auth_in_errors
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- reading back

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        assert commit is not None, f"no revision {revision!r} in {repo_id}"
        return dict(commit.files)

    def last_commit(self, repo_id: str, revision: str = "main") -> Commit:
        commit = self.repos[repo_id].resolve(revision)
        assert commit is not None
        return commit

    def export(self, repo_id: str, dest: Path, revision: str = "main") -> Path:
        """Write the files of ``repo_id`` at ``revision`` under ``dest``."""
        for path, content in self.files(repo_id, revision).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return dest

    # ------------------------------------------------------------------------------------- operations

    def _check_auth(self, header: str | None) -> None:
        if self.token is not None and header != f"Bearer {self.token}":
            detail = f" (received {header!r})" if self.echo_auth_in_errors else ""
            raise _HubError(401, f"Invalid credentials in Authorization header{detail}")

    def _repo(self, repo_id: str, auth: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and self.token is not None and auth != f"Bearer {self.token}"):
            raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def create_repo(self, payload: dict[str, Any]) -> dict[str, Any]:
        org, name = payload.get("organization"), payload.get("name")
        if not org or not name:
            raise _HubError(400, "organization and name are required")
        if payload.get("type", "model") != "model":
            raise _HubError(400, "this test server only hosts model repos")
        repo_id = f"{org}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                raise _HubError(409, "You already created this model repo", url=url)  # the Hub sends the url too
            repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            initial = Commit(hashlib.sha1(f"init {repo_id}".encode()).hexdigest(), None, "initial commit", {}, [])
            repo.commits[initial.oid] = initial
            repo.branches["main"] = initial.oid
            self.repos[repo_id] = repo
        return {"url": url, "name": repo_id}

    @staticmethod
    def validate_yaml(payload: dict[str, Any]) -> dict[str, Any]:
        content = payload.get("content", "")
        errors: list[str] = []
        if not content.startswith("---\n") or "\n---\n" not in content[3:]:
            return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(content[4:content.index("\n---\n", 3)]) or {}
        except yaml.YAMLError as err:
            return {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
        if not isinstance(meta, dict):
            errors.append("metadata must be a mapping")
            meta = {}
        tags = meta.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append('"tags" must be a list of strings')
        for entry in meta.get("model-index", []) or []:
            if not entry.get("name"):
                errors.append('"model-index[].name" is required')
            for result in entry.get("results", []):
                task, dataset, metrics = result.get("task", {}), result.get("dataset", {}), result.get("metrics", [])
                if not task.get("type") or not dataset.get("type") or not dataset.get("name") or not metrics:
                    errors.append('"model-index[].results[]" needs task.type, dataset.type, dataset.name and metrics')
                for metric in metrics:
                    if not metric.get("type") or "value" not in metric:
                        errors.append('"model-index[].results[].metrics[]" needs type and value')
        return {"errors": [{"message": e} for e in errors], "warnings": []}

    def create_branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if branch in repo.branches:
                raise _HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = self._commit(repo, payload.get("startingPoint") or "main").oid
        return {}

    def preupload(self, repo: Repo, rev: str, payload: dict[str, Any]) -> dict[str, Any]:
        existing = self._commit(repo, rev).files
        files = []
        for f in payload.get("files", []):
            old = existing.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_id(old) if old is not None else None})
        return {"files": files, "commitOid": self._commit(repo, rev).oid}

    def commit(self, repo: Repo, rev: str, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "the first NDJSON line must be the commit header")
        with self._lock:
            if rev not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            parent = repo.commits[repo.branches[rev]]
            files, changed = dict(parent.files), []
            for item in lines[1:]:
                key, value = item.get("key"), item.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, "only base64 file content is supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                    changed.append(value["path"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    raise _HubError(400, f"this test server does not support commit operation {key!r} (no LFS/Xet)")
            summary = lines[0]["value"].get("summary", "")
            digest = hashlib.sha1(parent.oid.encode() + summary.encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
            commit = Commit(digest.hexdigest(), parent.oid, summary, files, changed)
            repo.commits[commit.oid] = commit
            repo.branches[rev] = commit.oid
        return {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid,
                "pullRequestUrl": None}

    def info(self, repo: Repo, rev: str) -> dict[str, Any]:
        commit = self._commit(repo, rev)
        return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)], "tags": [], "downloads": 0, "likes": 0}

    def tree(self, repo: Repo, rev: str, prefix: str) -> list[dict[str, Any]]:
        commit = self._commit(repo, rev)
        prefix = prefix.strip("/")
        return [{"type": "file", "oid": git_blob_id(c), "size": len(c), "path": p}
                for p, c in sorted(commit.files.items()) if not prefix or p.startswith(prefix + "/")]


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._reply(status, json.dumps(data).encode())

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        auth = self.headers.get("Authorization")
        with hub._lock:
            hub.requests.append((method, path))
            hub.authorizations.append(auth)
        body = self._body() if method == "POST" else b""
        try:
            self._route(method, [unquote(p) for p in path.strip("/").split("/")], auth, body)
        except _HubError as err:
            headers = {"X-Error-Code": err.code} if err.code else {}
            self._reply(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers)

    def _route(self, method: str, parts: list[str], auth: str | None, body: bytes) -> None:
        hub = self.hub
        if method == "POST" and parts == ["api", "validate-yaml"]:
            result = hub.validate_yaml(json.loads(body or b"{}"))
            return self._json(400 if result["errors"] else 200, result)
        if method == "POST" and parts == ["api", "repos", "create"]:
            hub._check_auth(auth)
            return self._json(200, hub.create_repo(json.loads(body or b"{}")))
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo = hub._repo(f"{parts[2]}/{parts[3]}", auth)
            rest = parts[4:]
            if method == "POST" and len(rest) == 2 and rest[0] in ("branch", "preupload", "commit"):
                hub._check_auth(auth)
                if rest[0] == "branch":
                    return self._json(200, hub.create_branch(repo, rest[1], json.loads(body or b"{}")))
                if rest[0] == "preupload":
                    return self._json(200, hub.preupload(repo, rest[1], json.loads(body or b"{}")))
                return self._json(200, hub.commit(repo, rest[1], body))
            if method == "GET" and not rest:
                return self._json(200, hub.info(repo, "main"))
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._json(200, hub.info(repo, rest[1]))
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._json(200, hub.tree(repo, rest[1], "/".join(rest[2:])))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = hub._repo(f"{parts[0]}/{parts[1]}", auth)
            commit = hub._commit(repo, parts[3])
            file_path = "/".join(parts[4:])
            if file_path not in commit.files:
                raise _HubError(404, f"Entry not found: {file_path}", "EntryNotFound")
            content = commit.files[file_path]
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_id(content)}"'}
            return self._reply(200, content, headers, "application/octet-stream", head=method == "HEAD")
        raise _HubError(404, f"no route for {method} /{'/'.join(parts)} on this test server")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")
