"""A fake OpenAI-compatible chat-completions server on loopback, for tests.

    with FakeOpenAI(answer=lambda body: "42", faults={0: "429", 1: "timeout"}) as server:
        client = ChatClient(server.url, "fake-model", timeout_s=0.5)
        ...
        server.log      # one entry per request received: {"n", "key", "fault", "status", "body"}

    python tests/fake_openai.py --port 8001      # serve canned answers by hand ("ok" to everything)

`answer(body) -> str` gives the assistant message content (default "ok"). Faults, chosen per
request by `faults` ({request number: fault} or a function (n, body) -> fault or None):
"429" (with Retry-After: 0), "500", "503", "400", "timeout" (answers only after `hang_s`),
"disconnect" (closes the connection without a response), "broken_json" (a 200 whose body is cut
short), "echo" (a 400 whose body echoes the request headers, Authorization included, and other
credentials). `delay_s` slows every answer; `require_key` answers 401 unless the Bearer key matches.
The server tracks the most requests it ever had in flight at once (`max_in_flight`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.utils.openai_client import request_key  # noqa: E402


class FakeOpenAI:
    def __init__(self, answer=None, faults=None, delay_s: float = 0.0, hang_s: float = 3.0, require_key: str | None = None, port: int = 0):
        self.answer = answer or (lambda body: "ok")
        self.faults = faults or {}
        self.delay_s, self.hang_s, self.require_key = delay_s, hang_s, require_key
        self.log: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def keys(self, status: int | None = 200) -> list[str]:
        """Request keys received (those answered with `status`; None: all)."""
        with self._lock:
            return [e["key"] for e in self.log if status is None or e["status"] == status]

    def _fault(self, n: int, body: dict) -> str | None:
        return self.faults(n, body) if callable(self.faults) else self.faults.get(n)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _release(self) -> None:
                """This request stops counting as in flight (once): before its reply goes out, since
                the client may send its next request the moment the reply arrives."""
                with fake._lock:
                    if getattr(self, "_counted", False):
                        fake.in_flight -= 1
                        self._counted = False

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self._release()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with fake._lock:
                    n = len(fake.log)
                    entry = {"n": n, "key": request_key(body), "fault": fake._fault(n, body), "status": None, "body": body}
                    fake.log.append(entry)
                    fake.auth_headers.append(self.headers.get("Authorization"))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    self._counted = True
                try:
                    self._respond(entry, body)
                finally:
                    self._release()

            def _respond(self, entry: dict, body: dict) -> None:
                fault = entry["fault"]
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if fake.require_key and self.headers.get("Authorization") != f"Bearer {fake.require_key}":
                    entry["status"] = 401
                    return self._send(401, b'{"error": {"message": "bad key"}}')
                if fault in ("429", "500", "503", "400"):
                    entry["status"] = int(fault)
                    return self._send(int(fault), b'{"error": {"message": "injected"}}', {"Retry-After": "0"} if fault == "429" else None)
                if fault == "echo":  # a server that echoes the request's headers (and other secrets) in its error body
                    entry["status"] = 400
                    headers = {"Authorization": self.headers.get("Authorization"), **dict(self.headers.items())}
                    echo = {"error": {"message": "bad request", "headers": headers,
                                      "debug": "api_key=sk-live-abcdefgh12345678 session token: 0123456789abcdef0123456789abcdef"}}
                    return self._send(400, json.dumps(echo).encode())
                if fault == "timeout":
                    time.sleep(fake.hang_s)
                    entry["status"] = "timeout"
                    return
                if fault == "disconnect":
                    entry["status"] = "disconnect"
                    self.close_connection = True
                    return
                content = fake.answer(body)
                response = {
                    "id": f"chatcmpl-{entry['n']}",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4), "total_tokens": 10 + max(1, len(content) // 4)},
                }
                payload = json.dumps(response).encode()
                if fault == "broken_json":
                    entry["status"] = "broken_json"
                    return self._send(200, payload[: len(payload) // 2])
                entry["status"] = 200
                self._send(200, payload)

        return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve a fake OpenAI chat-completions API on loopback")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--delay", type=float, default=0.0)
    a = parser.parse_args()
    server = FakeOpenAI(delay_s=a.delay, port=a.port).start()
    print(f"fake OpenAI server at {server.url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
