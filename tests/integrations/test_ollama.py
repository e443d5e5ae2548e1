"""`phiquant ollama`: the Modelfile's TEMPLATE, rendered by an independent Go-template evaluator, equals
the GGUF's Jinja template for real chats; stops are llama.cpp's and generation_config's end tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.gguf_io import read_gguf
from phiquant.integrations.ollama import go_template, measure_layout
from phiquant.runtime.chat_template import ChatTemplate
from phiquant.runtime.llama import LoadedModel, LoadOptions
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.fixtures.chat_templates import (
    PHI3_APRIL_2024_TEMPLATE,
    PHI3_MEDIUM_TEMPLATE,
    PHI3_MINI_TEMPLATE,
    PHI35_MINI_TEMPLATE,
)
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.gguf_fixtures import ConvertedGGUF
from tests.fixtures.phi3_specs import PHI3_MINI_128K_APRIL_2024, PHI35_MINI
from tests.fixtures.phi4_specs import PHI4_MINI_REASONING_TEMPLATE, PHI4_MINI_TEMPLATE, PHI4_TEMPLATE
from tests.integrations.go_template import ollama_messages, render
from tests.integrations.modelfile_parser import parse_modelfile

TWO_TURNS = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris.\nIt has been since 987."},
    {"role": "user", "content": 'And of Italy? Answer with "one word".'},
]
CONVERSATIONS = [
    TWO_TURNS,
    TWO_TURNS[1:],
    [{"role": "user", "content": "{{ .System }} is not a template inside content"}],
    [{"role": "system", "content": ""}, *TWO_TURNS[1:2]],
]
TEMPLATES = {
    "phi3-mini": PHI3_MINI_TEMPLATE,
    "phi3.5-mini": PHI35_MINI_TEMPLATE,
    "phi3-medium": PHI3_MEDIUM_TEMPLATE,
    "phi4": PHI4_TEMPLATE,
    "phi4-mini": PHI4_MINI_TEMPLATE,
}


def jinja(source: str, bos: str = "<s>") -> ChatTemplate:
    return ChatTemplate(source, origin="test", bos_token=bos, eos_token="<|endoftext|>")


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_go_template_renders_as_the_jinja_template(name: str, conversation: int) -> None:
    template = jinja(TEMPLATES[name])
    go = go_template(measure_layout(template))
    messages = CONVERSATIONS[conversation]
    assert render(go, ollama_messages(messages)) == template.render(messages, add_generation_prompt=True)


def test_a_changed_template_is_caught() -> None:
    """The comparison above fails when the TEMPLATE is off by one character."""
    template = jinja(PHI35_MINI_TEMPLATE)
    go = go_template(measure_layout(template)).replace("<|end|>\n", "<|end|>", 1)
    assert render(go, ollama_messages(TWO_TURNS)) != template.render(TWO_TURNS, add_generation_prompt=True)


def test_template_bos_is_left_to_llama_cpp_when_the_file_adds_it() -> None:
    template = jinja(PHI3_APRIL_2024_TEMPLATE)
    layout = measure_layout(template)
    assert layout.prefix == "<s>"
    go = go_template(layout, include_prefix=False)
    expected = template.render(TWO_TURNS, add_generation_prompt=True)
    assert "<s>" + render(go, ollama_messages(TWO_TURNS)) == expected


@pytest.mark.parametrize(
    "source",
    [
        PHI4_MINI_REASONING_TEMPLATE,  # system text gathered before all turns: not per-message
        "{% for m in messages %}{{ loop.index }}{{ m['content'] }}{% endfor %}",
    ],
)
def test_templates_ollama_cannot_express_are_refused(source: str) -> None:
    with pytest.raises(PhiquantError, match="does not map onto Ollama's per-message TEMPLATE"):
        measure_layout(jinja(source))


def _llama_cpp_end_texts(gguf: Path) -> set[str]:
    with LoadedModel(gguf, LoadOptions(vocab_only=True)) as model:
        ends = [i for i in range(model.n_vocab) if model.is_end_of_generation(i)]
        return {model.detokenize([i], special=True) for i in ends}


def _generation_config_end_texts(checkpoint: Path) -> set[str]:
    ids = json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
    added = json.loads((checkpoint / "tokenizer.json").read_text())["added_tokens"]
    by_id = {token["id"]: token["content"] for token in added}
    return {by_id[i] for i in ([ids] if isinstance(ids, int) else ids)}


def test_cli_modelfile_for_phi35(
    converted_gguf: ConvertedGGUF, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    gguf = converted_gguf(PHI35_MINI, "f16")
    target = tmp_path / "ollama" / "Modelfile"
    target.parent.mkdir()
    result = run_phiquant("ollama", gguf, "-o", target)
    assert result.returncode == 0, result.stderr
    parsed = parse_modelfile(target.read_text())

    assert (target.parent / parsed.from_).resolve() == gguf.resolve()
    assert parsed.template is not None
    jinja_template = jinja(read_gguf(gguf).get("tokenizer.chat_template"))
    for messages in CONVERSATIONS:
        expected = jinja_template.render(messages, add_generation_prompt=True)
        assert render(parsed.template, ollama_messages(messages)) == expected

    stops = set(parsed.parameter("stop"))
    checkpoint = shared_phi3_checkpoint(PHI35_MINI)
    assert _generation_config_end_texts(checkpoint) <= stops  # <|end|>, <|assistant|>, <|endoftext|>
    assert _llama_cpp_end_texts(gguf) <= stops
    config = json.loads((checkpoint / "config.json").read_text())
    assert parsed.parameter("num_ctx") == [str(config["original_max_position_embeddings"])]


def test_prompt_tokens_match_when_the_template_writes_bos(
    converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    """April 2024 Phi-3: the template writes <s> and the file adds BOS; Ollama's prompt (TEMPLATE
    rendered, then llama.cpp's tokenizer with the file's BOS rule) must equal the Jinja prompt's ids."""
    gguf = converted_gguf(PHI3_MINI_128K_APRIL_2024, "f16")
    modelfile = api.ollama_modelfile(gguf, tmp_path / "Modelfile")
    assert modelfile.dropped_prefix == "<s>"
    parsed = parse_modelfile((tmp_path / "Modelfile").read_text())
    messages = TWO_TURNS[1:]
    ollama_prompt = render(parsed.template or "", ollama_messages(messages))
    jinja_prompt = jinja(read_gguf(gguf).get("tokenizer.chat_template")).render(messages)
    with LoadedModel(gguf, LoadOptions(vocab_only=True)) as model:
        ollama_ids = model.tokenize(ollama_prompt, add_special=True, parse_special=True)
        jinja_ids = model.tokenize(jinja_prompt, add_special=False, parse_special=True)
    assert ollama_ids == jinja_ids
    assert ollama_ids.count(model_bos(gguf)) == 1


def model_bos(gguf: Path) -> int:
    return int(read_gguf(gguf).get("tokenizer.ggml.bos_token_id"))


def test_cli_refuses_a_template_it_cannot_translate(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    gguf = converted_gguf(PHI35_MINI, "f16")
    result = run_phiquant(
        "ollama", gguf, "-o", tmp_path / "Modelfile", "--chat-template", PHI4_MINI_REASONING_TEMPLATE
    )
    assert_one_line_error(result, "--chat-template", "Ollama")
    assert not (tmp_path / "Modelfile").exists()


def test_cli_prints_the_modelfile_and_json(converted_gguf: ConvertedGGUF, tmp_path: Path) -> None:
    gguf = converted_gguf(PHI35_MINI, "f16")
    printed = run_phiquant("ollama", gguf, "--ctx", "1024", cwd=gguf.parent)
    assert printed.returncode == 0, printed.stderr
    assert parse_modelfile(printed.stdout).parameter("num_ctx") == ["1024"]
    assert parse_modelfile(printed.stdout).from_ == f"./{gguf.name}"
    as_json = run_phiquant("ollama", gguf, "--json")
    assert json.loads(as_json.stdout)["text"].startswith("FROM ")
