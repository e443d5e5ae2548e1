"""Resource bounds: every limit answers with its status, and the server keeps serving everyone else."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import openai
import pytest

from tests.cli.run import run_phiquant
from tests.server.server_process import RunningServer, running_server

QUESTION = [{"role": "user", "content": "Tell me everything"}]
LONG = 4000  # tokens: tens of seconds on one thread, so a request is still running when the test acts
# Random-weight fixtures sample an end token now and then; long requests must really run long.
NEVER_ENDS = {"2": -100, "32000": -100, "32001": -100, "32007": -100}
LIMITS = (
    "--ctx", "8192", "--parallel", "1", "--max-body-bytes", "4096", "--max-queue", "1",
    "--max-connections", "3", "--client-timeout", "1.5",
)  # fmt: skip


@pytest.fixture(scope="module")
def limited(phi35_gguf, server_cache):
    with running_server(phi35_gguf, *LIMITS, cache=server_cache) as running:
        yield running


def connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answers_quickly(server: RunningServer) -> bool:
    started = time.monotonic()
    reply = server.client().chat.completions.create(model=server.model, messages=QUESTION, max_tokens=3)
    return reply.usage.completion_tokens == 3 and time.monotonic() - started < 10


def test_oversized_bodies_get_413(limited) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as error:
        limited.client().chat.completions.create(model=limited.model, messages=big, max_tokens=3)
    assert error.value.status_code == 413 and error.value.body["code"] == "request_too_large"
    huge = httpx.post(f"{limited.base_url}/chat/completions", content=b"x" * 200_000, timeout=10)
    assert huge.status_code == 413
    assert answers_quickly(limited)


def test_a_slow_request_head_gets_408_while_others_are_served(limited) -> None:
    with connect(limited) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert answers_quickly(limited)
        for piece in (b"Content-", b"Type: a", b"pplication/json"):  # a byte trickle, never finished
            time.sleep(0.4)
            try:
                slow.sendall(piece)
            except OSError:
                break
        slow.settimeout(5)
        reply = slow.recv(4096)
        assert time.monotonic() - started < 5
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply


def test_slow_bodies_take_connections_and_the_rest_get_429_then_408_frees_them(limited) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    slow = [connect(limited) for _ in range(3)]
    try:
        for connection in slow:
            connection.sendall(head)
        wait_until(lambda: limited.health()["requests_in_progress"] == 3)
        with pytest.raises(openai.RateLimitError) as error:
            limited.client().chat.completions.create(model=limited.model, messages=QUESTION, max_tokens=3)
        assert error.value.body["code"] == "too_many_connections"
        assert error.value.response.headers["retry-after"] == "1"
        assert limited.health()["status"] == "ok"  # /health is never turned away
        replies = [connection.recv(4096) for connection in slow]
    finally:
        for connection in slow:
            connection.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies)
    assert answers_quickly(limited)


def test_requests_queue_first_come_first_served_and_the_overflow_gets_429(limited) -> None:
    client = limited.client()
    running = client.chat.completions.create(
        model=limited.model, messages=QUESTION, max_tokens=LONG, logit_bias=NEVER_ENDS, stream=True, seed=1
    )
    next(iter(running))  # the one slot is busy
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(
            client.chat.completions.create, model=limited.model, messages=QUESTION, max_tokens=3, seed=2
        )
        wait_until(lambda: limited.health()["slots"]["waiting"] == 1)
        with pytest.raises(openai.RateLimitError) as error:
            client.chat.completions.create(model=limited.model, messages=QUESTION, max_tokens=3)
        assert error.value.body["code"] == "queue_full"
        assert not queued.done()
        running.close()  # the client goes away: its slot passes to the waiting request
        assert queued.result(timeout=30).usage.completion_tokens == 3
    assert limited.wait_idle()["slots"]["idle"] == 1


def test_a_client_that_disconnects_frees_its_slot(limited) -> None:
    client = limited.client()
    stream = client.chat.completions.create(
        model=limited.model, messages=QUESTION, max_tokens=LONG, logit_bias=NEVER_ENDS, stream=True
    )
    next(iter(stream))
    stream.close()
    assert limited.wait_idle(timeout=5)["slots"]["idle"] == 1
    # The same for a non-streamed request whose client gives up.
    with pytest.raises(openai.APITimeoutError):
        limited.client(timeout=1).chat.completions.create(
            model=limited.model, messages=QUESTION, max_tokens=LONG, logit_bias=NEVER_ENDS
        )
    assert limited.wait_idle(timeout=5)["slots"]["idle"] == 1
    assert answers_quickly(limited)


def test_generation_time_is_bounded_per_request(phi35_gguf, server_cache) -> None:
    with running_server(phi35_gguf, "--ctx", "8192", "--request-timeout", "1", cache=server_cache) as bounded:
        started = time.monotonic()
        reply = bounded.client().chat.completions.create(
            model=bounded.model, messages=QUESTION, max_tokens=LONG, logit_bias=NEVER_ENDS
        )
        assert time.monotonic() - started < 10
        assert reply.choices[0].finish_reason == "length" and 0 < reply.usage.completion_tokens < LONG


def test_a_template_that_hangs_on_some_input_fails_that_request_only(
    phi35_gguf, server_cache, tmp_path
) -> None:
    template = tmp_path / "hangs.jinja"
    template.write_text(
        "{% for m in messages %}{% if m['content'] == 'loop' %}{% for a in range(100000) %}"
        "{% for b in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
        "<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    )
    with running_server(phi35_gguf, "--chat-template", str(template), cache=server_cache) as server:
        client = server.client()
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "loop"}])
        assert time.monotonic() - started < 10
        assert (
            error.value.body["code"] == "chat_template_error" and "longer than" in error.value.body["message"]
        )
        assert answers_quickly(server)


def test_a_template_reaching_python_internals_on_some_input_fails_that_request_only(
    phi35_gguf, server_cache, tmp_path
) -> None:
    """A template that passes the start-up check and attacks only when a request says the word."""
    template = tmp_path / "sleeper.jinja"
    template.write_text(
        "{% for m in messages %}{% if m['content'] == 'attack' %}"
        "{{ ().__class__.__base__.__subclasses__() }}{{ cycler.__init__.__globals__.os.system('echo owned') }}"
        "{% endif %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    )
    with running_server(phi35_gguf, "--chat-template", str(template), cache=server_cache) as server:
        with pytest.raises(openai.BadRequestError) as error:
            server.client().chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": "attack"}]
            )
        body = error.value.body
        assert body["code"] == "chat_template_error" and "unsafe" in body["message"]
        # The client learns what went wrong, not where the operator keeps files.
        assert "chat template" in body["message"] and str(tmp_path) not in body["message"]
        assert answers_quickly(server)


def test_a_template_reaching_python_internals_stops_the_server_at_start(phi35_gguf, server_cache) -> None:
    evil = "{{ ().__class__.__base__.__subclasses__() }}"
    result = run_phiquant("serve", phi35_gguf, "--port", "0", "--chat-template", evil, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("phiquant: error:")]
    assert "--chat-template" in line and "unsafe" in line


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_prompt_length_and_max_tokens_are_capped_and_the_server_keeps_answering(
    phi35_gguf, server_cache
) -> None:
    with running_server(
        phi35_gguf, "--max-prompt-tokens", "24", "--max-tokens", "8", cache=server_cache
    ) as capped:
        client = capped.client()
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(
                model=capped.model, messages=[{"role": "user", "content": "word " * 200}], max_tokens=2
            )
        assert too_long.value.body["code"] == "prompt_too_long" and "--max-prompt-tokens" in str(
            too_long.value
        )
        with pytest.raises(openai.BadRequestError) as too_many:
            client.chat.completions.create(model=capped.model, messages=QUESTION, max_tokens=9)
        assert too_many.value.body["code"] == "max_tokens_too_large"
        # No max_tokens: the server's cap applies instead of the context size.
        reply = client.chat.completions.create(model=capped.model, messages=QUESTION, logit_bias=NEVER_ENDS)
        assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
