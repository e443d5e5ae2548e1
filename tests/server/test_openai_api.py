"""The server, driven by the official `openai` client over loopback, answers as OpenAI's API does."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.server.server_process import running_server

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Can you introduce .NET"}]
SPECIAL_TEXTS = ("<|end|>", "<|assistant|>", "<|endoftext|>", "<|user|>", "<|system|>")


def test_models_lists_the_served_model(server) -> None:
    client = server.client()
    (model,) = client.models.list().data
    assert model.id == server.model == "model-f16"
    assert client.models.retrieve(server.model).id == server.model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion_counts_tokens_like_the_hugging_face_tokenizer(server, hf_tokenizer) -> None:
    reply = server.client().chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=12, seed=5
    )
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    expected_prompt = hf_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert reply.usage.prompt_tokens == len(expected_prompt)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == len(expected_prompt) + 12
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")


def test_streamed_chat_is_the_same_answer_in_pieces(server) -> None:
    client = server.client()
    whole = client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=20, seed=9)
    chunks = list(
        client.chat.completions.create(
            model=server.model,
            messages=QUESTION,
            max_tokens=20,
            seed=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["length"]
    # Token counts, not prompt_tokens_details: how much of the prompt a free sequence still holds
    # depends on which sequence each request was given.
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert chunks[-1].choices == []
    assert [getattr(chunks[-1].usage, k) for k in counts] == [getattr(whole.usage, k) for k in counts]
    assert len({c.id for c in chunks}) == 1


def test_stream_is_server_sent_events_ending_with_done(server) -> None:
    body = {"model": server.model, "messages": QUESTION, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_text_completion_whole_streamed_and_echoed(server, hf_tokenizer) -> None:
    client = server.client()
    prompt = "The capital of France is"
    whole = client.completions.create(model=server.model, prompt=prompt, max_tokens=10, seed=3)
    assert whole.usage.prompt_tokens == len(hf_tokenizer.encode(prompt))
    assert whole.usage.completion_tokens == 10 and whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=server.model, prompt=prompt, max_tokens=10, seed=3, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    echoed = client.completions.create(model=server.model, prompt=prompt, max_tokens=10, seed=3, echo=True)
    assert echoed.choices[0].text == prompt + whole.choices[0].text
    default = client.completions.create(model=server.model, prompt=prompt, seed=3)
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


def test_token_id_prompts_are_accepted(server, hf_tokenizer) -> None:
    client = server.client()
    prompt = "The capital of France is"
    as_text = client.completions.create(model=server.model, prompt=prompt, max_tokens=8, seed=3)
    as_ids = client.completions.create(
        model=server.model, prompt=hf_tokenizer.encode(prompt), max_tokens=8, seed=3
    )
    assert as_ids.choices[0].text == as_text.choices[0].text


def test_stop_sequences_cut_the_answer_where_they_begin(server) -> None:
    client = server.client()
    free = client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=40, temperature=0)
    text = free.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    cut = client.chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=40, temperature=0, stop=["never-there", stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_end_token_ends_the_answer_and_is_never_sent(server) -> None:
    """The random fixture rarely picks <|end|>; a logit bias makes it likely, and the model samples it."""
    client = server.client()
    replies = [
        client.chat.completions.create(
            model=server.model, messages=QUESTION, max_tokens=100, seed=seed, logit_bias={"32007": 2.5}
        )
        for seed in range(8)
    ]
    stopped = [r for r in replies if r.choices[0].finish_reason == "stop"]
    assert any(r.usage.completion_tokens >= 3 for r in stopped)
    for reply in replies:
        assert not any(special in reply.choices[0].message.content for special in SPECIAL_TEXTS)


def bad_request(server, **fields) -> openai.APIStatusError:
    body = {"model": server.model, "messages": QUESTION, **fields}
    with pytest.raises(openai.APIStatusError) as error:
        server.client().chat.completions.create(**body)
    return error.value


def test_invalid_requests_get_openai_style_errors(server) -> None:
    cases = {
        "missing messages": ({"messages": openai.NOT_GIVEN}, 400, "messages"),
        "empty messages": ({"messages": []}, 400, "messages"),
        "negative max_tokens": ({"max_tokens": -5}, 400, "max_tokens"),
        "temperature out of range": ({"temperature": 3}, 400, "temperature"),
        "too many choices": ({"n": 17}, 400, "n"),
        "unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        "unknown argument": ({"extra_body": {"frobnicate": 1}}, 400, "frobnicate"),
        "bad logit bias": ({"logit_bias": {"99999": 1}}, 400, "logit_bias"),
    }
    for name, (fields, status, param) in cases.items():
        error = bad_request(server, **fields)
        assert (error.status_code, error.body.get("param")) == (status, param), name
        assert error.body["type"] == "invalid_request_error" and error.body["message"], name


def test_unknown_model_is_404(server) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        server.client().chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert error.value.body["code"] == "model_not_found"


def test_requests_beyond_the_context_are_refused_with_a_clear_message(server) -> None:
    error = bad_request(server, max_tokens=100_000)
    assert error.status_code == 400 and error.body["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in error.body["message"]
    long = [{"role": "user", "content": "word " * 400}]
    error = bad_request(server, messages=long)
    assert error.status_code == 400 and error.body["code"] == "context_length_exceeded"


def test_malformed_http_gets_json_errors_not_500s(server) -> None:
    url = f"{server.base_url}/chat/completions"
    responses = {
        "bad json": httpx.post(url, content=b"{not json", timeout=10),
        "not an object": httpx.post(url, json=[1, 2], timeout=10),
        "not utf-8": httpx.post(url, content=b"\xff\xfe{}", timeout=10),
        "wrong method": httpx.get(url, timeout=10),
        "unknown path": httpx.get(f"{server.base_url}/engines", timeout=10),
    }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "bad json": 400,
        "not an object": 400,
        "not utf-8": 400,
        "wrong method": 405,
        "unknown path": 404,
    }
    for name, response in responses.items():
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, name
    # Broken HTTP framing is refused by the HTTP parser itself, still with a status, not a dropped line.
    assert raw_exchange(
        server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"
    ).startswith(b"HTTP/1.1 400")
    assert server.health()["status"] == "ok"


def raw_exchange(server, request: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(65536)


def test_api_key_is_required_when_set(phi35_gguf, server_cache) -> None:
    with running_server(phi35_gguf, "--api-key", "s3cret", cache=server_cache) as keyed:
        with pytest.raises(openai.AuthenticationError) as error:
            keyed.client(api_key="wrong").models.list()
        assert error.value.status_code == 401 and error.value.body["code"] == "invalid_api_key"
        assert httpx.post(f"{keyed.base_url}/chat/completions", json={}, timeout=10).status_code == 401
        assert keyed.client(api_key="s3cret").models.list().data[0].id == keyed.model
        assert keyed.health()["status"] == "ok"  # /health stays open for monitors
