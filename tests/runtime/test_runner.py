"""Opening a model for generation: files, caches, layer placement, templates, chat sessions."""

from __future__ import annotations

import json
import os
import time

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from phiquant.ggml import devices
from phiquant.progress import RecordingReporter
from phiquant.runtime.chat import ChatSession
from phiquant.runtime.generate import Completion, SamplingOptions
from phiquant.runtime.images import ImageInput
from phiquant.runtime.model_files import gguf_model_file
from phiquant.runtime.runner import RunnerOptions, open_runner, parse_gpu_layers
from phiquant.workflows.as_gguf import SOURCE_RECORD, cached_conversion, converted_cache_root
from tests.fixtures.broken_checkpoints import copy_checkpoint
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.fixtures.phi4v_checkpoints import IMAGE_MARKER

EVIL_TEMPLATES = {
    "subclasses": "{{ ().__class__.__base__.__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.system('true') }}",
    "endless": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIQUANT_CACHE", str(tmp_path / "cache"))


def test_hugging_face_directory_is_converted_once_and_reused(tmp_path, shared_phi3_checkpoint) -> None:
    checkpoint = copy_checkpoint(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "Phi-3.5-mini-instruct")
    first = cached_conversion(checkpoint)
    assert first.converted and not first.cache_hit
    # The cached file is what `phiquant convert --outtype auto` makes of the same checkpoint.
    direct = api.convert(checkpoint, tmp_path / "direct.gguf", "auto").path
    assert first.gguf.read_bytes() == direct.read_bytes()
    made = first.gguf.stat().st_mtime_ns
    again = cached_conversion(checkpoint)
    assert again.cache_hit and again.gguf == first.gguf and again.gguf.stat().st_mtime_ns == made


def test_an_edited_checkpoint_is_converted_again_and_the_stale_copy_removed(
    tmp_path, shared_phi3_checkpoint
) -> None:
    checkpoint = copy_checkpoint(shared_phi3_checkpoint(PHI35_MINI), tmp_path / "ckpt")
    old = cached_conversion(checkpoint).gguf
    config = checkpoint / "generation_config.json"
    os.utime(config, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cached_conversion(checkpoint).cache_hit  # touched, not changed: the same model
    edited = json.loads(config.read_text()) | {"temperature": 0.25}
    config.write_text(json.dumps(edited, indent=2))
    new = cached_conversion(checkpoint)
    assert not new.cache_hit and new.gguf != old
    assert not old.exists() and [p.name for p in converted_cache_root().iterdir()] == [new.gguf.parent.name]


@pytest.mark.slow
def test_a_vision_checkpoint_directory_loads_with_its_projector(phi4v_checkpoint, converted_phi4v) -> None:
    """api.load (and so chat/generate/serve) of a Phi4ForCausalLMV folder: the cached conversion holds the
    mmproj beside the model, and a conversion stopped before the mmproj was written is not reused."""
    image = ImageInput(64, 64, bytes(64 * 64 * 3), "grey")
    prompt = f"<|im_start|>user<|im_sep|>{IMAGE_MARKER}\nWhat is it?<|im_end|><|im_start|>assistant<|im_sep|>"
    with api.load(phi4v_checkpoint, RunnerOptions(n_ctx=512, threads=2)) as runner:
        assert runner.mmproj is not None and runner.mmproj.parent == runner.file.gguf.parent
        assert runner.mmproj.read_bytes() == converted_phi4v("f16", "f16").mmproj.read_bytes()
        assert "".join(runner.stream_with_images(prompt, [image], SamplingOptions(max_tokens=1)))
        entry = runner.file.gguf.parent
    runner.mmproj.unlink()  # as if the conversion had stopped after the language model
    (entry / SOURCE_RECORD).unlink()
    again = cached_conversion(phi4v_checkpoint)
    assert not again.cache_hit and again.gguf.parent == entry and runner.mmproj.is_file()


def test_a_file_that_is_neither_gguf_nor_a_directory_is_refused(tmp_path) -> None:
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(PhiquantError, match="not a GGUF file"):
        gguf_model_file(not_gguf)
    with pytest.raises(PhiquantError, match="no such file"):
        gguf_model_file(tmp_path / "missing.gguf")


def test_gpu_layers_on_a_cpu_build_run_everything_on_the_cpu_and_say_so(converted_gguf) -> None:
    if devices.supports_gpu_offload():
        pytest.skip("this llama.cpp build has a GPU backend")
    reporter = RecordingReporter()
    with open_runner(
        converted_gguf(PHI35_MINI, "f16"), RunnerOptions(gpu_layers=10), reporter=reporter
    ) as runner:
        assert runner.placement.gpu_layers == 0
    (warning,) = reporter.messages("warn")
    assert "--gpu-layers 10" in warning and f"all {PHI35_MINI.num_hidden_layers} layers on the CPU" in warning
    assert "no GPU support" in warning
    reporter = RecordingReporter()
    with open_runner(
        converted_gguf(PHI35_MINI, "f16"), RunnerOptions(gpu_layers="auto"), reporter=reporter
    ) as runner:
        assert runner.placement.gpu_layers == 0 and reporter.messages("warn") == []


def test_gpu_layers_flag_values() -> None:
    assert parse_gpu_layers("auto") == "auto" and parse_gpu_layers("AUTO") == "auto"
    assert parse_gpu_layers("12") == 12
    for bad in ("-1", "some", "1.5"):
        with pytest.raises(PhiquantError, match="--gpu-layers"):
            parse_gpu_layers(bad)


@pytest.mark.parametrize("name", list(EVIL_TEMPLATES))
def test_a_hostile_template_override_is_stopped_before_the_first_prompt(name, converted_gguf) -> None:
    with pytest.raises(PhiquantError, match="unsafe|longer than|failed to render") as error:
        open_runner(
            converted_gguf(PHI35_MINI, "f16"), RunnerOptions(chat_template=EVIL_TEMPLATES[name])
        ).close()
    assert "--chat-template" in str(error.value)


def test_a_template_that_hangs_only_on_some_input_fails_that_turn_not_the_session(converted_gguf) -> None:
    template = (
        "{% for m in messages %}{% if m['content'] == 'loop' %}{% for a in range(100000) %}"
        "{% for b in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
        "<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    )
    with open_runner(
        converted_gguf(PHI35_MINI, "f16"), RunnerOptions(chat_template=template, threads=1)
    ) as runner:
        session = ChatSession(runner, SamplingOptions(seed=1, max_tokens=5))
        started = time.monotonic()
        with pytest.raises(PhiquantError, match="longer than"):
            list(session.reply("loop"))
        assert time.monotonic() - started < 10
        assert "".join(session.reply("fine")) == session.last.text
        assert [m["content"] for m in session.history] == ["fine", session.last.text]


def test_chat_turns_keep_history_and_the_first_turn_equals_a_one_shot_generation(converted_gguf) -> None:
    options = SamplingOptions(seed=11, max_tokens=12)
    with open_runner(converted_gguf(PHI35_MINI, "f16"), RunnerOptions(threads=1)) as runner:
        session = ChatSession(runner, options, system="Be brief.")
        first = "".join(session.reply("Can you introduce .NET"))
        one_shot = api.chat_completion(
            runner,
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Can you introduce .NET"},
            ],
            options,
        )
        assert first == one_shot.text
        second = "".join(session.reply("And C#?"))
        assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
        assert session.history[3]["content"] == second
        # The second turn's prompt is the whole conversation, built by the template.
        expected = runner.chat_tokens(session.messages()[:-1])
        assert session.context.tokens[: len(expected)] == expected
        session.reset()
        assert session.history == [] and session.context.tokens == []
        assert "".join(session.reply("Can you introduce .NET")) == first


def test_a_conversation_longer_than_the_context_is_refused_with_advice(converted_gguf) -> None:
    with open_runner(converted_gguf(PHI35_MINI, "f16"), RunnerOptions(threads=1)) as runner:
        session = ChatSession(runner, SamplingOptions(seed=1, max_tokens=4))
        with pytest.raises(PhiquantError, match="/reset"):
            list(session.reply("word " * 400))


def test_api_generate_tokens_fills_the_completion(converted_gguf) -> None:
    with api.load(converted_gguf(PHI35_MINI, "f16"), RunnerOptions(threads=1)) as runner:
        completion = Completion()
        text = "".join(
            api.generate_tokens(
                runner,
                runner.text_tokens("Hello"),
                SamplingOptions(seed=2, max_tokens=6),
                completion=completion,
            )
        )
        assert text == completion.text and completion.completion_tokens == 6 and completion.seed == 2
