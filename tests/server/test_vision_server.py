"""`phiquant serve` of the Phi-4-reasoning-vision fixture, spoken to by the official `openai` client:
image_url parts (data: URLs) are read through libmtmd, streamed and not; the <think> section of an answer
about an image goes to `reasoning_content` as for text prompts; bad images and remote URLs are a 400 naming
the part, and the server goes on serving."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.fixtures.image_files import noise_image, png_declaring
from tests.server.server_process import running_server
from tests.server.test_reasoning import PUSH, expected_split

pytestmark = pytest.mark.slow

# PUSH biases the <think>/</think> ids, which this fixture shares with Phi-4-reasoning's (100280, 100281).
REASONING_SEEDS = (0, 7)  # on this fixture: a reply without <think>; one that reasons, then answers


@pytest.fixture(scope="module")
def vision_server(converted_phi4v, tmp_path_factory):
    converted = converted_phi4v("f16", "f16")  # its mmproj lies beside it and is found
    cache = tmp_path_factory.mktemp("vision-serve")
    with running_server(converted.model, "--ctx", "1024", cache=cache, threads=2) as running:
        yield running


@pytest.fixture(scope="module")
def inline_reasoning_server(converted_phi4v, tmp_path_factory):
    """The same model under `--reasoning-format none`: its replies are the raw text, markers inline."""
    converted = converted_phi4v("f16", "f16")
    cache = tmp_path_factory.mktemp("vision-serve-inline")
    with running_server(
        converted.model, "--ctx", "1024", "--reasoning-format", "none", cache=cache, threads=2
    ) as running:
        yield running


def data_url(path, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def truncated_data_url(path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()[:300]).decode()}"


def image_message(url: str, text: str = "What is in this picture?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def test_image_chat_completes_streamed_and_not(vision_server, tmp_path) -> None:
    client = vision_server.client()
    url = data_url(noise_image(tmp_path / "a.png", 96, 80))
    text_only = client.chat.completions.create(
        model=vision_server.model,
        messages=[{"role": "user", "content": "What is in this picture?"}],
        max_tokens=1,
    )
    reply = client.chat.completions.create(
        model=vision_server.model, messages=image_message(url), max_tokens=4, temperature=0, seed=1
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    assert reply.usage.prompt_tokens >= text_only.usage.prompt_tokens + 64  # at least min-pixels tokens
    stream = client.chat.completions.create(
        model=vision_server.model,
        messages=image_message(url),
        max_tokens=4,
        temperature=0,
        seed=1,
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == reply.choices[0].message.content


def pushed_chat(server, messages: list[dict], seed: int, **extra):
    return server.client().chat.completions.create(
        model=server.model, messages=messages, seed=seed, **PUSH, **extra
    )


def test_reasoning_about_an_image_is_split_from_the_answer_whole_and_streamed(
    vision_server, inline_reasoning_server, tmp_path
) -> None:
    """The oracle is the raw text of the same seeded generation (the image prompt under
    `--reasoning-format none`), split by test_reasoning's rule."""
    messages = image_message(data_url(noise_image(tmp_path / "a.png", 96, 80)))
    split_both = 0
    for seed in REASONING_SEEDS:
        raw = pushed_chat(inline_reasoning_server, messages, seed).choices[0].message
        assert getattr(raw, "reasoning_content", None) is None
        reasoning, answer = expected_split(raw.content)
        message = pushed_chat(vision_server, messages, seed).choices[0].message
        assert (getattr(message, "reasoning_content", None), message.content) == (reasoning, answer), seed
        split_both += bool(reasoning) and bool(answer)
        chunks = pushed_chat(vision_server, messages, seed, stream=True)
        deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == (reasoning or "")
        assert "".join(d.content or "" for d in deltas) == answer
    assert split_both >= 1  # some seed reasoned about the image and then answered: the split was exercised


@pytest.mark.parametrize(
    ("make_url", "fragment"),
    [
        (lambda tmp: "https://example.com/cat.png", "--allow-image-urls"),
        (lambda tmp: "data:image/png;base64,%%%not-base64%%%", "base64 is invalid"),
        (lambda tmp: truncated_data_url(noise_image(tmp / "t.png", 64, 64)), "corrupt or truncated"),
        (lambda tmp: "data:image/svg+xml;base64," + base64.b64encode(b"<svg xmlns='x'/>").decode(), "SVG"),
        (lambda tmp: "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4\n").decode(), "PDF"),
        (lambda tmp: data_url(png_declaring(tmp / "huge.png", 20000, 20000)), "downscale"),
    ],
    ids=["remote-url", "bad-base64", "truncated", "svg", "pdf", "20000x20000"],
)
def test_bad_image_is_a_400_naming_the_part(vision_server, tmp_path, make_url, fragment) -> None:
    client = vision_server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=vision_server.model, messages=image_message(make_url(tmp_path)), max_tokens=1
        )
    error = caught.value.body
    assert error["param"] == "messages[0].content[1].image_url"
    assert fragment in error["message"]
    assert vision_server.health()["status"] == "ok"
