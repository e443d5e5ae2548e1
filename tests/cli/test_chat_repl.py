"""`phiquant chat` driven in a pseudo-terminal, as a person types into it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pexpect
import pytest

from tests.cli.run import assert_one_line_error, cli_environment, restore_default_sigint, run_phiquant
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.transformers_reference import load_transformers_tokenizer

PROMPT = ">>> "
SYSTEM = "Be brief."


@pytest.fixture
def environment(tmp_path) -> dict[str, str]:
    env = cli_environment()
    env["PHIQUANT_CACHE"] = str(tmp_path / "cache")
    env["TERM"] = "dumb"  # no terminal escape sequences from readline
    return env


def spawn_chat(model, environment, *args: str) -> pexpect.spawn:
    command = ["-m", "phiquant", "chat", str(model), "--threads", "1", *args]
    session = pexpect.spawn(
        sys.executable,
        command,
        env=environment,
        encoding="utf-8",
        timeout=120,
        preexec_fn=restore_default_sigint,
    )
    session.expect_exact(PROMPT)
    return session


def say(session: pexpect.spawn, text: str) -> str:
    """Type a line, wait for the next prompt, return the answer as printed."""
    session.sendline(text)
    session.expect_exact(PROMPT)
    printed = session.before.replace("\r\n", "\n")
    echoed, _, answer = printed.partition("\n")
    assert echoed.strip() == text
    return answer.removesuffix("\n")


def one_shot(model, question: str, *args: str) -> str:
    result = run_phiquant(
        "generate", model, "--chat", "--system", SYSTEM, "-p", question, "--threads", "1", "--json", *args
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["text"]


def test_two_turns_reset_and_exit(converted_gguf, environment) -> None:
    model = converted_gguf(PHI35_MINI, "f16")
    sampling = ("--seed", "5", "--temp", "0.7", "--max-tokens", "12")
    session = spawn_chat(model, environment, "--system", SYSTEM, *sampling)
    assert "/exit" in session.before and "Chatting with model-f16" in session.before
    first = say(session, "Can you introduce .NET")
    second = say(session, "And C#?")
    assert first and second and first != second
    # The first turn is exactly what a one-shot generation with the same seed says.
    assert first == one_shot(model, "Can you introduce .NET", *sampling)
    session.sendline("/reset")
    session.expect_exact("(conversation cleared)")
    session.expect_exact(PROMPT)
    assert say(session, "Can you introduce .NET") == first  # no trace of the earlier turns
    session.sendline("/exit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_session(converted_gguf, environment) -> None:
    model = converted_gguf(PHI35_MINI, "f16")
    # A context of 8192 tokens and no token limit: the random model would talk for a long time.
    session = spawn_chat(model, environment, "--ctx", "8192", "--seed", "1")
    session.sendline("Tell me everything")
    session.expect_exact("Tell me everything")
    session.expect(r"\S{5}")  # the answer is streaming
    session.sendintr()
    session.expect_exact("[stopped]", timeout=20)
    session.expect_exact(PROMPT)
    assert "Ctrl-C stops an answer" in say(session, "/help")  # the session is alive
    session.sendline("Short one")
    session.expect_exact("Short one")
    session.sendintr()
    session.expect_exact(PROMPT, timeout=20)
    session.sendeof()
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_ctrl_c_at_the_prompt_keeps_the_session(converted_gguf, environment) -> None:
    session = spawn_chat(converted_gguf(PHI35_MINI, "f16"), environment, "--max-tokens", "3")
    session.sendintr()
    session.expect_exact("/exit or Ctrl-D to quit")
    session.sendline("/exit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_history_reaches_the_prompt_like_apply_chat_template(
    converted_gguf, shared_phi3_checkpoint, tmp_path
) -> None:
    """--json prints one line per turn with its token counts; the second turn's prompt must be the whole
    conversation as the Hugging Face template builds it."""
    model = converted_gguf(PHI35_MINI, "f16")
    command = [sys.executable, "-m", "phiquant", "chat", str(model), "--json", "--threads", "1"]
    command += ["--system", SYSTEM, "--seed", "9", "--max-tokens", "8"]
    env = cli_environment() | {"PHIQUANT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        command, input="Hello\nWhat did I say?\n/exit\n", capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    conversation = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "What did I say?"},
    ]
    hf = load_transformers_tokenizer(shared_phi3_checkpoint(PHI35_MINI))
    expected = hf.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert second["prompt_tokens"] == len(expected)
    assert first["completion_tokens"] == second["completion_tokens"] == 8


def test_a_hostile_template_ends_chat_with_one_line(converted_gguf, tmp_path) -> None:
    template = tmp_path / "evil.jinja"
    template.write_text("{{ cycler.__init__.__globals__.os.system('echo owned') }}")
    result = run_phiquant("chat", converted_gguf(PHI35_MINI, "f16"), "--chat-template", template)
    assert_one_line_error(result, "--chat-template", "unsafe")
    assert "owned" not in result.stdout


def test_an_endless_template_fails_that_turn_with_one_line_and_the_session_goes_on(
    converted_gguf, environment, tmp_path
) -> None:
    """A template that loops forever on some input: that turn is refused within the render time bound,
    naming the template file, and the next turn (which the template renders) is answered."""
    template = tmp_path / "hangs.jinja"
    template.write_text(
        "{% for m in messages %}{% if m['content'] == 'loop' %}{% for a in range(100000) %}"
        "{% for b in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
        "<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    )
    session = spawn_chat(
        converted_gguf(PHI35_MINI, "f16"), environment, "--chat-template", str(template), "--max-tokens", "4"
    )
    started = time.monotonic()
    session.sendline("loop")
    session.expect_exact(PROMPT)
    assert time.monotonic() - started < 15
    printed = session.before.replace("\r\n", "\n")
    (error,) = [line for line in printed.splitlines() if line.startswith("phiquant: error:")]
    assert str(template) in error and "longer than" in error
    assert "Traceback" not in printed
    answer = say(session, "hello")
    assert "phiquant: error" not in answer and answer.strip()
    session.sendline("/exit")
    session.expect(pexpect.EOF)
