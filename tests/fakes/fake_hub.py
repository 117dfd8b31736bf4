"""A tiny Hugging Face Hub on 127.0.0.1, enough for huggingface_hub's snapshot_download.

The machine that runs the tests has no internet, so llf_stage.py's `hf` source is tested
against this fake. It answers what huggingface_hub 2.4.0 asks when it downloads a repo:

    GET  /api/models/{repo}/revision/{rev}      model info (sha, siblings): a branch revision
    GET  /api/models/{repo}/tree/{rev}[/{dir}]  the file listing (?recursive=...)
    HEAD /{repo}/resolve/{rev}/{file}           metadata: X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{file}           the file (Range requests answered with 206)
    GET  /api/agent-harnesses                   asked (and cached in HF_HOME) unless telemetry
                                                is off

Like the real Hub, large ("LFS") files are not served by the Hub itself: their HEAD and GET
answer 302 to a second server, the "CDN" (another port, so the client does not follow the
redirect and does not send it the token), with X-Linked-Etag (the sha256) and X-Linked-Size.
Gated repos answer 401 (X-Error-Code: GatedRepo) without "Authorization: Bearer <token>".
Nothing advertises Xet storage (no xetHash, no X-Xet-* headers or xet-auth link), so the
client downloads over plain HTTP. Every request is recorded in `hub.requests`.

    with FakeHub() as hub:
        commit = hub.add_repo("org/tiny", {"config.json": b"{}"}, token="hf_secret")
        hub.cut("config.json", then_status=503)   # break the next download of it halfway
        hub.stop_cdn()                            # or make the LFS files unreachable
        os.environ["HF_ENDPOINT"] = hub.endpoint
        ...
        hub.downloads("config.json")              # the GETs that carried its bytes
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")

_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?$")
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_BLOB = re.compile(r"^/blobs/([0-9a-f]{64})$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file, which the Hub uses as the ETag of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    """One request the fake received."""

    server: str  # "hub" or "cdn"
    method: str
    path: str  # unquoted, without the query
    query: dict[str, list[str]]
    authorization: str | None
    range: str | None
    status: int = 0  # what the fake answered (0 until it answered)
    file: str | None = None  # the repo file whose bytes the answer carried


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: dict[str, bytes]
    token: str | None = None  # gated: requests need "Authorization: Bearer <token>"
    branches: dict[str, str] = field(default_factory=dict)

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub: every answer has a length
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass  # keep pytest's output clean

    # helpers

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json(status, {"error": message}, extra)

    def _repo(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
        """The repo and commit, or None after answering the error the Hub would answer."""
        hub = self.server.hub
        repo = hub.repos.get(repo_id)
        auth = self.headers.get("Authorization")
        if repo is None:
            # the Hub answers 401 to an anonymous client, so as not to tell what exists
            status = 404 if auth else 401
            self._error(status, "Repository not found", "RepoNotFound")
            return None
        if repo.token is not None and auth != f"Bearer {repo.token}":
            self._error(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                "GatedRepo",
            )
            return None
        commit = revision if revision == repo.commit else repo.branches.get(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return None
        return repo, commit

    # routes

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        url = urlsplit(self.path)
        path = unquote(url.path)
        self._seen = self.server.hub._record(
            Request(
                server=self.server.role,
                method=self.command,
                path=path,
                query=parse_qs(url.query),
                authorization=self.headers.get("Authorization"),
                range=self.headers.get("Range"),
            )
        )
        if self.server.role == "cdn":
            self._cdn(path)
            return
        if path == "/api/agent-harnesses":
            # what huggingface_hub fetches (and caches in HF_HOME) unless telemetry is off
            self._json(200, {"standardEnvVars": ["AI_AGENT", "AGENT"], "harnesses": {}})
        elif match := _TREE.match(path):
            self._tree(match[1], match[2], match[3] or "", self._seen.query)
        elif match := _INFO.match(path):
            self._info(match[1], match[2])
        elif match := _RESOLVE.match(path):
            self._resolve(match[1], match[2], match[3])
        else:
            self._error(404, f"no route for {path}")

    def _info(self, repo_id: str, revision: str) -> None:
        found = self._repo(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        self._json(
            200,
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.token else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(repo.files)],
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        found = self._repo(repo_id, revision)
        if found is None:
            return
        repo, _ = found
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.rstrip("/") + "/" if folder else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, data in sorted(repo.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):].split("/")
            # the directories on the way, as the Hub lists them
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                directory = prefix + "/".join(rest[:depth])
                entries.setdefault(
                    directory,
                    {"type": "directory", "oid": git_blob_sha1(directory.encode()), "size": 0,
                     "path": directory},
                )
            if len(rest) > 1 and not recursive:
                continue
            entry: dict[str, Any] = {"type": "file", "oid": git_blob_sha1(data),
                                     "size": len(data), "path": name}
            if repo.is_lfs(name):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
            entries[name] = entry
        if folder and not entries:
            self._error(404, f"{folder} does not exist on {revision}", "EntryNotFound")
            return
        self._json(200, [entries[key] for key in sorted(entries)])

    def _resolve(self, repo_id: str, revision: str, name: str) -> None:
        found = self._repo(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        data = repo.files.get(name)
        if data is None:
            self._error(404, f"{name} does not exist on {revision}", "EntryNotFound", headers)
            return
        if repo.is_lfs(name):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "Location": f"{self.server.hub.cdn_url}/blobs/{sha256}?sig=fake",
                    "ETag": f'"{git_blob_sha1(data)}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                }
            )
            self._send(302, b"", headers, "text/plain; charset=utf-8")
            return
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._content(name, data, headers)

    def _cdn(self, path: str) -> None:
        match = _BLOB.match(path)
        found = self.server.hub._blob(match[1]) if match else None
        if found is None:
            self._error(404, "NoSuchKey")
            return
        name, data = found
        self._content(name, data, {"ETag": f'"{match[1]}"', "Accept-Ranges": "bytes"})

    def _content(self, name: str, data: bytes, headers: dict[str, str]) -> None:
        """Send a file's bytes, honouring Range, or break off / fail as the test asked."""
        hub = self.server.hub
        self._seen.file = name
        start, end = 0, len(data) - 1
        status = 200
        if self._seen.range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self._seen.range.strip())
            if match is None or int(match[1]) >= len(data):
                self._error(416, "Requested Range Not Satisfiable", None,
                            {**headers, "Content-Range": f"bytes */{len(data)}"})
                return
            start = int(match[1])
            end = min(int(match[2]), end) if match[2] else end
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        if self.command == "GET":
            failing = hub._take_fault(name)
            if isinstance(failing, int):
                self._error(failing, f"fake outage for {name}")
                return
            if failing == "cut":
                # announce the whole part, send half of it, hang up
                self._seen.status = status
                part = data[start:end + 1]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
        self._send(status, data[start:end + 1], headers, "application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role
        self.connections: set[socket.socket] = set()  # open keep-alive connections

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """Stop serving and hang up on every client (a pooled connection must not outlive us)."""
        if self.socket.fileno() == -1:
            return
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # pragma: no cover - already gone
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up first
        super().handle_error(request, client_address)  # pragma: no cover - a bug in the fake


class FakeHub:
    """The fake Hub and its CDN, each a server in a thread; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._faults: dict[str, list[str | int]] = {}  # file name -> what its next GETs get
        self._then: dict[str, int] = {}  # file name -> status after a cut, until heal()
        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
            for server in (self._hub, self._cdn)
        ]

    @property
    def endpoint(self) -> str:
        """What HF_ENDPOINT must be."""
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, token: str | None = None,
                 commit: str | None = None, branch: str = "main") -> str:
        """Publish a model repo with these files; return its commit sha (40 hex)."""
        if commit is None:
            listing = json.dumps({k: git_blob_sha1(v) for k, v in sorted(files.items())})
            commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
        self.repos[repo_id] = Repo(repo_id, commit, dict(files), token, {branch: commit})
        return commit

    def cut(self, name: str, *, then_status: int | None = None) -> None:
        """Break off the next download of file `name` halfway through.

        With `then_status`, its later downloads answer that status until `heal()`: the
        client's retry within the same run fails too.
        """
        with self._lock:
            self._faults.setdefault(name, []).append("cut")
            if then_status is not None:
                self._then[name] = then_status

    def stop_cdn(self) -> None:
        """Take the CDN down: LFS files can no longer be fetched (connection refused)."""
        self._cdn.stop()

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()
            self._then.clear()

    def downloads(self, name: str | None = None) -> list[Request]:
        """The GETs that carried file bytes (of file `name`, or of any file), in order."""
        with self._lock:
            return [
                request for request in self.requests
                if request.method == "GET" and request.status in (200, 206)
                and request.file is not None and name in (None, request.file)
            ]

    # used by the handler

    def _record(self, request: Request) -> Request:
        with self._lock:
            self.requests.append(request)
        return request

    def _take_fault(self, name: str) -> str | int | None:
        with self._lock:
            queued = self._faults.get(name)
            if queued:
                return queued.pop(0)
            return self._then.get(name)

    def _blob(self, sha256: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for name, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return name, data
        return None

    def __enter__(self) -> FakeHub:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._hub, self._cdn):
            server.stop()
        for thread in self._threads:
            thread.join(timeout=5)
