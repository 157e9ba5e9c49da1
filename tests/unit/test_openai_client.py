"""ChatClient against the loopback fake server: retries on each injected fault, fatal errors,
cache, bounded concurrency, accounting, and the API key kept out of everything written."""

from __future__ import annotations

import json

from megatron_vlm.utils.openai_client import ChatClient, request_key
from tests.fake_openai import FakeOpenAI

MSG = [{"role": "user", "content": "What is two plus two?"}]


def make_client(server, tmp_path=None, **kw):
    kw = {"timeout_s": 5.0, "backoff_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3, **kw}
    return ChatClient(server.url, "fake-model", cache_dir=tmp_path, **kw)


def test_each_transient_fault_is_retried_until_answered():
    for fault in ("429", "500", "503", "timeout", "disconnect", "broken_json"):
        with FakeOpenAI(answer=lambda body: "4", faults={0: fault, 1: fault}, hang_s=2.5) as server:
            client = make_client(server, timeout_s=1.5)  # generous: a loaded CI machine must not time out a normal answer
            result = client.complete(MSG, temperature=0)
            assert result.ok and result.content == "4" and result.attempts == 3, (fault, result)
            assert [e["status"] for e in server.log][-1] == 200 and len(server.log) == 3
            usage = client.usage()
            assert usage["requests"] == 3 and usage["answered"] == 1 and sum(v for k, v in usage.items() if k.startswith("retry_")) == 2
            assert usage["prompt_tokens"] == 10


def test_gives_up_with_a_reason_after_max_retries():
    with FakeOpenAI(faults=lambda n, body: "500") as server:
        client = make_client(server, max_retries=2)
        result = client.complete(MSG)
        assert not result.ok and result.error == "HTTP 500 (gave up after 3 attempts)"
        assert len(server.log) == 3 and client.usage()["failed"] == 1


def test_client_errors_are_not_retried():
    with FakeOpenAI(faults={0: "400"}) as server:
        result = make_client(server).complete(MSG)
        assert not result.ok and result.error.startswith("HTTP 400") and len(server.log) == 1


def test_cache_answers_a_repeated_request_without_sending(tmp_path):
    with FakeOpenAI(answer=lambda body: "cached answer") as server:
        first = make_client(server, tmp_path).complete(MSG, temperature=0)
        again = make_client(server, tmp_path)  # a new process would start like this
        second = again.complete(MSG, temperature=0)
        assert len(server.log) == 1 and not first.cached and second.cached and second.content == "cached answer"
        assert first.key == second.key == request_key({"model": "fake-model", "messages": MSG, "temperature": 0})
        assert server.log[0]["key"] == first.key  # the key is the hash of exactly what was sent
        other = again.complete(MSG, temperature=0.5)
        assert not other.cached and len(server.log) == 2
        assert again.usage()["cache_hits"] == 1


def test_concurrency_is_bounded_and_used():
    with FakeOpenAI(answer=lambda body: body["messages"][0]["content"], delay_s=0.2) as server:
        client = make_client(server, concurrency=3, timeout_s=5)
        requests = [([{"role": "user", "content": f"q{i}"}], {}) for i in range(9)]
        results = client.complete_many(requests)
        assert [r.content for r in results] == [f"q{i}" for i in range(9)]  # input order kept
        assert server.max_in_flight == 3


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("FAKE_KEY", secret)
    with FakeOpenAI(require_key=secret, faults={0: "500"}) as server:
        client = make_client(server, tmp_path, api_key_env="FAKE_KEY")
        result = client.complete(MSG)
        assert result.ok and server.auth_headers[-1] == f"Bearer {secret}"
        written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
        assert written and secret not in written
        assert secret not in repr(client) and secret not in json.dumps(client.usage()) and secret not in str(result)
    with FakeOpenAI(require_key=secret) as server:
        monkeypatch.delenv("FAKE_KEY")
        result = make_client(server, api_key_env="FAKE_KEY").complete(MSG)
        assert not result.ok and "HTTP 401" in result.error and secret not in result.error
        assert server.auth_headers == [None]  # no key in the environment: no Authorization header


def test_error_bodies_and_echoed_keys_are_redacted(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("FAKE_KEY", secret)
    leaks = (secret, "sk-live-abcdefgh", "0123456789abcdef0123456789abcdef", "DO-NOT-LEAK")
    with FakeOpenAI(faults={0: "echo"}, answer=lambda body: "echo: Bearer " + secret) as server:
        client = make_client(server, tmp_path, api_key_env="FAKE_KEY")
        failed = client.complete(MSG)
        assert server.auth_headers[0] == f"Bearer {secret}"  # the server did get (and echo) the key
        assert not failed.ok and failed.error.startswith("HTTP 400:") and "[redacted]" in failed.error
        assert not any(s in failed.error for s in leaks), failed.error
        answered = client.complete(MSG, temperature=0)  # a 200 whose content echoes the key
        assert answered.ok and secret not in answered.content and "[redacted]" in answered.content
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert written and secret not in written


def test_redact_by_hand():
    from megatron_vlm.utils.openai_client import redact

    key = "k3y-abcdefghijkl"
    assert redact(f"got Authorization: Bearer {key} ok", key) == "got Authorization: [redacted] ok"
    assert redact('{"api_key": "abc123xyz", "user": "ann"}') == '{"api_key": "[redacted]", "user": "ann"}'
    assert redact(f"cut here: {key[:9]}", key) == "cut here: [redacted]"  # a key cut short by the 200-character limit
    assert redact("password=hunter2; model=qwen") == "password=[redacted]; model=qwen"
    assert redact("HTTP 404: model qwen-7b not found") == "HTTP 404: model qwen-7b not found"
