"""A loopback fake of the Hugging Face Hub file API, for testing the real download code offline.

Serves HEAD/GET `/{org}/{repo}/resolve/{revision}/{path}` from a folder per repo, with the ETag,
X-Repo-Commit and Content-Length headers `huggingface_hub.hf_hub_download` needs. Bound to
127.0.0.1 on a free port; requests are counted so tests can check caching.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _resolve(self) -> Path | None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                path = hub.root / repo / filename
                return path if path.is_file() else None

            def _headers(self, path: Path | None) -> None:
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def do_HEAD(self):  # noqa: N802
                hub.requests.append(("HEAD", self.path))
                self._headers(self._resolve())

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path))
                path = self._resolve()
                self._headers(path)
                if path is not None:
                    self.wfile.write(path.read_bytes())

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
