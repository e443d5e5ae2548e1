"""One seed and prompt, one text: through `generate`, the `chat` REPL and the server alike."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest

from tests.cli.run import cli_environment, run_phiquant

QUESTION = "Can you introduce .NET"
TEMPLATED = f"<|user|>\n{QUESTION}<|end|>\n<|assistant|>\n"  # Phi-3.5's template applied to QUESTION
MAX_TOKENS = 24


def generate(model, *args: str) -> str:
    result = run_phiquant(
        "generate", model, "--threads", "1", "--json", "--max-tokens", str(MAX_TOKENS), *args
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["text"]


def chat_first_answer(model, cache, *args: str) -> str:
    env = cli_environment() | {"PHIQUANT_CACHE": str(cache), "TERM": "dumb"}
    command = ["-m", "phiquant", "chat", str(model), "--threads", "1", "--max-tokens", str(MAX_TOKENS), *args]
    session = pexpect.spawn(sys.executable, command, env=env, encoding="utf-8", timeout=120)
    session.expect_exact(">>> ")
    session.sendline(QUESTION)
    session.expect_exact(">>> ")
    answer = session.before.replace("\r\n", "\n").partition("\n")[2].removesuffix("\n")
    session.sendline("/exit")
    session.expect(pexpect.EOF)
    return answer


@pytest.mark.parametrize(("temperature", "seed"), [("0.7", 42), ("0", 7)], ids=["sampled", "greedy"])
def test_generate_chat_and_server_say_the_same(server, phi35_gguf, server_cache, temperature, seed) -> None:
    options = ("--temp", temperature, "--seed", str(seed))
    from_generate = generate(phi35_gguf, "--chat", "-p", QUESTION, *options)
    assert from_generate
    assert generate(phi35_gguf, "-p", TEMPLATED, *options) == from_generate
    assert chat_first_answer(phi35_gguf, server_cache, *options) == from_generate

    client = server.client()
    messages = [{"role": "user", "content": QUESTION}]
    sampling = {"temperature": float(temperature), "seed": seed, "max_tokens": MAX_TOKENS}
    from_server = client.chat.completions.create(model=server.model, messages=messages, **sampling)
    assert from_server.choices[0].message.content == from_generate
    streamed = client.chat.completions.create(model=server.model, messages=messages, stream=True, **sampling)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == from_generate
    raw = client.completions.create(model=server.model, prompt=TEMPLATED, **sampling)
    assert raw.choices[0].text == from_generate
