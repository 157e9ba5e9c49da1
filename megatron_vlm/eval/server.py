"""A minimal OpenAI-compatible /v1/chat/completions server around the in-process HF backend.

For tests and small local runs (one request at a time, greedy); serve real checkpoints with vLLM.
Accepts one user message whose content is a string or a list of ``text`` and ``image_url`` parts
(data URLs with base64 image bytes, as backends.chat_request sends them), optionally followed by
an assistant message to continue (vLLM's ``continue_final_message``); the reply holds only the
generated text, as vLLM's does.

    server = ChatServer(HFBackend(...), port=0); server.start(); ... ; server.stop()
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_vlm.eval.prompts import Prompt


def _decode_image(url: str):
    from PIL import Image

    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError("only base64 data URLs are supported")
    with Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1]))) as im:
        return im.convert("RGB")


def parse_messages(messages: list[dict], continue_final: bool = False) -> tuple[Prompt, list]:
    """(prompt, images) from the request's messages: one user turn, then the assistant text to continue."""
    if continue_final:
        if len(messages) != 2 or messages[-1].get("role") != "assistant" or not isinstance(messages[-1]["content"], str):
            raise ValueError("continue_final_message needs a user message then an assistant message with text")
        prefill, messages = messages[-1]["content"], messages[:-1]
    else:
        prefill = ""
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise ValueError("expected exactly one user message")
    content = messages[0]["content"]
    if isinstance(content, str):
        return Prompt([{"type": "text", "text": content}], prefill), []
    parts, images = [], []
    for part in content:
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            parts.append({"type": "image", "page": len(images)})
            images.append(_decode_image(part["image_url"]["url"]))
        else:
            raise ValueError(f"unsupported content part {part.get('type')!r}")
    return Prompt(parts, prefill), images


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
                    prompt, images = parse_messages(body["messages"], bool(body.get("continue_final_message")))
                except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                    return self._send(400, {"error": {"message": str(e)}})
                with server.lock:
                    server.requests += 1
                    out = server.backend.generate(prompt, images, body.get("max_tokens"))
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
