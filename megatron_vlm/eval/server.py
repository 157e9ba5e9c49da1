"""A minimal OpenAI-compatible /v1/chat/completions server around the in-process HF backend.

For tests and small local runs (one request at a time, greedy); serve real checkpoints with vLLM.
Accepts user messages whose content is a string or a list of ``text`` and ``image_url`` parts
(data URLs with base64 image bytes, as backends.chat_request sends them).

    server = ChatServer(HFBackend(...), port=0); server.start(); ... ; server.stop()
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _decode_image(url: str):
    from PIL import Image

    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError("only base64 data URLs are supported")
    with Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1]))) as im:
        return im.convert("RGB")


def parse_messages(messages: list[dict]) -> tuple[str, list]:
    """(question text, images) from the one user turn the eval sends; the text is the eval's question_text."""
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1:
        raise ValueError("expected exactly one user message")
    content = users[0]["content"]
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content:
        if part.get("type") == "text":
            texts.append(part["text"])
        elif part.get("type") == "image_url":
            images.append(_decode_image(part["image_url"]["url"]))
        else:
            raise ValueError(f"unsupported content part {part.get('type')!r}")
    return "".join(texts), images


class ChatServer:
    def __init__(self, backend, host: str = "127.0.0.1", port: int = 0, model_name: str = "local"):
        self.backend, self.model_name = backend, model_name
        self.lock = threading.Lock()  # one generation at a time; requests queue here
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    text, images = parse_messages(body["messages"])
                except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                    return self._send(400, {"error": {"message": str(e)}})
                with server.lock:
                    server.requests += 1
                    out = server.backend.generate_text(text, images, body.get("max_tokens"))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{server.requests}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": server.model_name,
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": out}}
                        ],
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                    },
                )

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
