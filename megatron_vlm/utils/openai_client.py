"""A small client for OpenAI-compatible chat-completions endpoints (vLLM, SGLang, hosted APIs).

    client = ChatClient("http://localhost:8000/v1", "my-model", cache_dir="cache/", concurrency=8)
    result = client.complete([{"role": "user", "content": "hi"}], temperature=0.0)
    results = client.complete_many([(messages, {"max_tokens": 64}), ...])   # same order as given
    result.ok, result.content, result.error, result.cached;  client.usage()

- At most `concurrency` requests are in flight at once (across threads).
- 429, 408, 5xx, timeouts, connection errors and unparsable responses are retried up to
  `max_retries` times with exponential backoff and full jitter (a server's Retry-After is
  honoured, capped at `backoff_max_s`); other HTTP errors fail at once. A request that cannot be
  answered ends as `ok=False` with a one-line `error`; nothing raises.
- With `cache_dir`, every answered request is stored under the sha256 of its payload (model,
  messages, parameters; never the URL or the key) as soon as it arrives, written aside and
  renamed, so a rerun after a crash sends nothing that had been answered.
- The API key is read from the environment variable `api_key_env` (none: no Authorization
  header, as local servers expect) and is never printed, cached or put in an error message. A
  server's error body (quoted, up to 200 characters, in the error) has the key and anything that
  looks like a credential (Bearer/Basic tokens, sk-... keys, key=value pairs named key, token,
  secret, password or authorization, and 32+ character tokens) replaced by "[redacted]" first
  (`redact`); a response that contains the key itself has it replaced before it is used or cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.utils import atomic

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REDACTED = "[redacted]"
CREDENTIAL = re.compile(
    r"\b(?:bearer|basic)\s+[\w.~+/=-]{6,}"
    r"|\bsk-[\w-]{6,}"
    r"|\b((?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|password|passwd|authorization|x-api-key)\"?'?\s*[:=]\s*\"?'?)"
    r"(?:(?:bearer|basic)\s+)?[^\s\"',;}]+"
    r"|[\w-]{32,}",
    re.IGNORECASE,
)


def redact(text: str, secret: str | None = None) -> str:
    """`text` with `secret` (and any 6+ character start of it left at the end by a cut) and
    everything that looks like a credential replaced by [redacted]."""
    if secret:
        text = text.replace(secret, REDACTED)
        for n in range(len(secret) - 1, 5, -1):
            if text.endswith(secret[:n]):
                text = text[:-n] + REDACTED
                break
    return CREDENTIAL.sub(lambda m: (m[1] or "") + REDACTED, text)


def request_key(payload: dict) -> str:
    """The cache key of a request payload: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


@dataclass
class ChatResult:
    ok: bool
    content: str | None = None
    error: str | None = None
    cached: bool = False
    key: str = ""
    attempts: int = 0
    usage: dict = field(default_factory=dict)
    response: dict | None = None


class _Retry(Exception):
    def __init__(self, cause: str, wait_s: float | None = None):
        super().__init__(cause)
        self.cause, self.wait_s = cause, wait_s


class ChatClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 300.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        cache_dir: str | Path | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency, self.max_retries, self.timeout_s = max(1, concurrency), max_retries, timeout_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.__api_key = os.environ.get(api_key_env) or None
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self._stats: Counter = Counter()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.model!r}, concurrency={self.concurrency}, key={'set' if self.__api_key else 'none'})"

    # ---- accounting ----
    def _count(self, **kw) -> None:
        with self._lock:
            self._stats.update(kw)

    def usage(self) -> dict:
        """Requests sent / answered / failed / served from cache, retries by cause, tokens."""
        with self._lock:
            return dict(sorted(self._stats.items()))

    # ---- cache ----
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def cached(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is asked again

    def _store(self, key: str, response: dict) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        atomic.write_text(path, json.dumps(response, sort_keys=True, ensure_ascii=False))

    # ---- requests ----
    def payload(self, messages: list[dict], **params) -> dict:
        return {"model": self.model, "messages": messages, **params}

    def complete(self, messages: list[dict], **params) -> ChatResult:
        """One chat completion (from the cache when it was answered before); never raises."""
        payload = self.payload(messages, **params)
        key = request_key(payload)
        hit = self.cached(key)
        if hit is not None:
            self._count(cache_hits=1)
            return self._result(hit, key, cached=True, attempts=0)
        body = json.dumps(payload, ensure_ascii=False).encode()
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            try:
                with self._slots:
                    self._count(requests=1)
                    response = self._post(body)
                if self.__api_key and self.__api_key in json.dumps(response, ensure_ascii=False):  # a server echoing the key
                    response = json.loads(json.dumps(response, ensure_ascii=False).replace(self.__api_key, REDACTED))
                self._store(key, response)
                usage = response.get("usage") or {}
                self._count(answered=1, prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0))
                return self._result(response, key, cached=False, attempts=attempt + 1)
            except _Retry as e:
                last = e.cause
                self._count(**{f"retry_{e.cause.split(':')[0].replace(' ', '_')}": 1})
                if attempt < self.max_retries:
                    time.sleep(self._delay(attempt, e.wait_s))
            except _Fatal as e:
                self._count(failed=1)
                return ChatResult(ok=False, error=str(e), key=key, attempts=attempt + 1)
        self._count(failed=1)
        return ChatResult(ok=False, error=f"{last} (gave up after {self.max_retries + 1} attempts)", key=key, attempts=self.max_retries + 1)

    def complete_many(self, requests: list[tuple[list[dict], dict]]) -> list[ChatResult]:
        """complete() for each (messages, params), `concurrency` at a time; results in input order."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda r: self.complete(r[0], **r[1]), requests))

    def _delay(self, attempt: int, wait_s: float | None) -> float:
        if wait_s is not None:
            return min(wait_s, self.backoff_max_s)
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**attempt))

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            body = e.read(4096).decode("utf-8", "replace") if e.fp else ""
            detail = redact(" ".join(redact(body, self.__api_key).split()), self.__api_key)[:200]
            if e.code in RETRY_STATUS or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
                raise _Retry(f"HTTP {e.code}", wait) from None
            raise _Fatal(f"HTTP {e.code}: {detail}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            cause = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "connection error"
            raise _Retry(f"{cause}: {type(reason).__name__}") from None
        except Exception as e:  # http.client.IncompleteRead, RemoteDisconnected, ...
            raise _Retry(f"connection error: {type(e).__name__}") from None
        try:
            response = json.loads(raw)
            response["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("bad response: not a chat completion") from None
        return response

    @staticmethod
    def _result(response: dict, key: str, cached: bool, attempts: int) -> ChatResult:
        content = response["choices"][0]["message"].get("content") or ""
        return ChatResult(ok=True, content=content, cached=cached, key=key, attempts=attempts, usage=response.get("usage") or {}, response=response)


class _Fatal(Exception):
    pass
