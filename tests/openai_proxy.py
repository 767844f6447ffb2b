"""A small recording proxy between the openai backend and a real server, for the backend tests: it forwards
requests, records their headers and bodies, and can answer instead of the server with what a real fleet
sometimes sends: 429/503 with Retry-After, a non-JSON page, a completion without choices, no logprobs."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")   # e.g. http://127.0.0.1:PORT (no /v1)
        self.requests: list[dict] = []         # {"path", "headers", "body"} per request seen
        self.faults: list[str] = []            # consumed one per request: "429", "503", "garbage", "no_choices"
        self.strip_logprobs = False            # remove logprobs from forwarded answers
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes, content_type="application/json", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    fault = proxy.faults.pop(0) if proxy.faults and method == "POST" else None
                if fault in ("429", "503"):
                    return self._answer(int(fault), json.dumps({"error": {"message": "busy"}}).encode(),
                                        headers={"Retry-After": "0"})
                if fault == "garbage":
                    return self._answer(200, b"<html>502 Bad Gateway</html>", "text/html")
                if fault == "no_choices":
                    return self._answer(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                         "model": "m", "choices": []}).encode())
                request = urllib.request.Request(proxy.upstream + self.path, data=body if method == "POST" else None,
                                                 method=method, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                except OSError:
                    return self._answer(502, b'{"error": {"message": "upstream down"}}')
                if proxy.strip_logprobs and status == 200:
                    payload = json.loads(data)
                    for choice in payload.get("choices", []):
                        choice["logprobs"] = None
                    data = json.dumps(payload).encode()
                self._answer(status, data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
