"""A loopback fake of the Hugging Face Hub file API, for testing the real `huggingface_hub` client offline.

Reads: HEAD/GET `/{org}/{repo}/resolve/{revision}/{path}` from a folder per repo, with the ETag,
X-Repo-Commit and Content-Length headers `huggingface_hub.hf_hub_download` needs.

Writes (what `HfApi.create_repo` and `HfApi.upload_folder` send):
  POST /api/repos/create {"name", "organization", "visibility"?} -> {"url"}; 409 when it exists
  POST /api/models/{org}/{repo}/preupload/{rev} -> every file "regular": contents come inline in the commit
  POST /api/models/{org}/{repo}/commit/{rev} NDJSON: a "header" line, then "file" lines
       {"path", "content" (base64), "encoding"} -> {"commitUrl", "commitOid"}
  POST /api/validate-yaml (the client checks README.md metadata first) -> no errors
Committed files land in the repo's folder, so the read endpoints serve them. Writes need an
`Authorization: Bearer ...` header (the given `token` when one is set), else 401.

Bound to 127.0.0.1 on a free port. `requests` records (method, path) of every request, `repos`
the create payloads and `commits` the decoded commits, so tests can assert on them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_WRITE = re.compile(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$")


class FakeHub:
    def __init__(self, root: Path, token: str | None = None):
        self.root = Path(root)
        self.token = token  # None: any bearer token may write
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}  # repo id -> create_repo payload
        self.commits: list[dict] = []  # {"repo", "revision", "oid", "header", "files": {path: bytes}}
        self.heads: dict[str, str] = {}  # repo id -> last commit oid
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            # ---------------------------------------------------------------- reads

            def _resolve(self) -> tuple[str, Path | None]:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return "", None
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                path = hub.root / repo / filename
                return repo, path if path.is_file() else None

            def _headers(self, repo: str, path: Path | None) -> None:
                commit = hub.heads.get(repo, COMMIT)
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def do_HEAD(self):  # noqa: N802
                hub.requests.append(("HEAD", self.path))
                self._headers(*self._resolve())

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path))
                repo, path = self._resolve()
                self._headers(repo, path)
                if path is not None:
                    self.wfile.write(path.read_bytes())

            # ---------------------------------------------------------------- writes

            def _json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                given = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
                return bool(given) and (hub.token is None or given == hub.token)

            def do_POST(self):  # noqa: N802
                path = self.path.split("?")[0]
                hub.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                if not self._authorized():
                    message = "Invalid credentials in Authorization header"
                    return self._json(401, {"error": message}, {"X-Error-Message": message})
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                match = _WRITE.match(path)
                if match is None:
                    return self._json(404, {"error": f"fake hub: no POST {path}"})
                repo, action, revision = match.groups()
                if repo not in hub.repos:
                    return self._json(
                        404, {"error": f"Repository {repo} not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                if action == "preupload":
                    files = json.loads(body)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                    return self._json(200, {"files": modes})
                return self._commit(repo, revision, body)

            def _create(self, payload: dict) -> None:
                repo = f"{payload['organization']}/{payload['name']}"
                url = f"{hub.endpoint}/{repo}"
                if repo in hub.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": url})
                hub.repos[repo] = payload
                (hub.root / repo).mkdir(parents=True, exist_ok=True)
                self._json(200, {"url": url, "name": repo})

            def _commit(self, repo: str, revision: str, body: bytes) -> None:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {}
                for line in lines:
                    if line["key"] == "file" and line["value"].get("encoding") == "base64":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] != "header":  # lfsFile, deletions: never asked for by this fake
                        return self._json(400, {"error": f"fake hub: unsupported commit line {line['key']}"})
                for name, data in files.items():
                    target = hub.root / repo / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                oid = hashlib.sha1(body).hexdigest()  # noqa: S324 (a commit id, not security)
                hub.heads[repo] = oid
                hub.commits.append(
                    {"repo": repo, "revision": revision, "oid": oid, "header": header, "files": files}
                )
                self._json(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}", "commitOid": oid})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
