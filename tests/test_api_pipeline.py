"""The whole pipeline through the Python API only, as a notebook would run it: a model id from the local
Hugging Face cache (network disabled) -> reference and quantized ladder -> evaluation and report ->
model card and Ollama Modelfile -> generation and chat.  Progress goes to a notebook's own reporter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import phiquant
from tests.fixtures.checkpoint_fixtures import SharedCheckpoints
from tests.fixtures.hub_cache import add_to_hub_cache
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.integrations.modelfile_parser import parse_modelfile

REPO_ID = "microsoft/Phi-3.5-mini-instruct"
OPTIONS = phiquant.EvalOptions(ctx=128, max_windows=3, speed_runs=0)


class NotebookProgress(phiquant.Reporter):
    """What a notebook would plug in instead of the CLI's progress bar."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.done: dict[str, float] = {}
        self.warnings: list[str] = []

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        self.phases.append(task)
        self.done[task] = 0.0

    def advance(self, amount: float) -> None:
        self.done[self.phases[-1]] += amount

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@pytest.mark.slow
@pytest.mark.usefixtures("no_network")
def test_pipeline_through_the_python_api(
    hub_cache: Path, shared_phi3_checkpoint: SharedCheckpoints, tmp_path: Path
) -> None:
    add_to_hub_cache(hub_cache, REPO_ID, shared_phi3_checkpoint(PHI35_MINI))
    out = tmp_path / "out"
    out.mkdir()
    progress = NotebookProgress()

    reference = phiquant.convert(REPO_ID, out / "Phi-3.5-mini-instruct-F16.gguf", "f16", reporter=progress)
    assert isinstance(reference, phiquant.ConvertResult)
    assert reference.file_size == reference.path.stat().st_size

    ladder = phiquant.quantize(REPO_ID, ["Q8_0", "Q4_K_M"], out, reporter=progress)
    assert isinstance(ladder, phiquant.QuantizeResult)
    assert [f.type for f in ladder.files] == ["Q8_0", "Q4_K_M"]
    assert all(f.path.parent == out and f.file_size == f.path.stat().st_size for f in ladder.files)
    assert progress.phases and all(amount > 0 for amount in progress.done.values())

    evaluation = phiquant.evaluate([f.path for f in ladder.files], reference=reference.path, options=OPTIONS)
    by_type = {f.type: f for f in evaluation.files}
    assert by_type["Q8_0"].divergence is not None and by_type["Q4_K_M"].divergence is not None
    assert by_type["Q8_0"].divergence.kld_mean < by_type["Q4_K_M"].divergence.kld_mean

    report = phiquant.report(out, options=OPTIONS, reporter=progress)
    assert report.json_path is not None and report.json_path.is_file()

    card = phiquant.model_card(out)
    assert card.path == out / "README.md"
    front, _, body = card.path.read_text().removeprefix("---\n").partition("\n---\n")
    meta = yaml.safe_load(front)
    assert meta["base_model"] == REPO_ID
    assert meta["quantized_by"] == "phiquant"
    assert meta["license"] == "mit"
    assert {"gguf", "phi3"} <= set(meta["tags"])
    recorded = json.loads(report.json_path.read_text())["evaluation"]["files"]
    for file in recorded:
        kld = file["divergence"]["kld_mean"] if file["divergence"] else None
        row = next(r for r in card.quality if r.name == Path(file["path"]).name)
        assert row.kld_mean == kld and row.perplexity == file["perplexity"]["value"]
        assert f"| {row.name} | {row.type} |" in body
    (ladder_command,) = [
        line for line in body.splitlines() if line.startswith(f"phiquant quantize {REPO_ID} ")
    ]
    assert sorted(ladder_command.split()[4:-2:2]) == ["Q4_K_M", "Q8_0"]
    assert f"phiquant convert {REPO_ID} --outtype f16 -o {reference.path.name}" in body
    assert "phiquant report ." in body

    q8 = ladder.files[0].path
    modelfile = phiquant.ollama_modelfile(q8, out / "Modelfile")
    parsed = parse_modelfile((out / "Modelfile").read_text())
    assert parsed.from_ == f"./{q8.name}" and "<|end|>" in parsed.parameter("stop")
    assert modelfile.num_ctx == int(parsed.parameter("num_ctx")[0])

    greedy = phiquant.SamplingOptions(temperature=0.0, max_tokens=6, seed=1)
    with phiquant.load(q8, phiquant.RunnerOptions(threads=1)) as model:
        completion = model.generate("The capital of France is", greedy)
        assert 0 < completion.completion_tokens <= 6 and completion.finish_reason in ("length", "stop")
        assert "".join(model.stream("The capital of France is", greedy)) == completion.text
        answer = model.chat([{"role": "user", "content": "Hello"}], greedy)
        assert answer.prompt_tokens == len(model.chat_tokens([{"role": "user", "content": "Hello"}]))
        session = model.chat_session(system="Be brief.", sampling=greedy)
        first = "".join(session.reply("Hello"))
        assert session.history == [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": first},
        ]
        session.close()


def test_the_package_exports_the_api_lazily() -> None:
    import subprocess
    import sys

    code = "import sys, phiquant; print('llama_cpp' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="src"
    )
    assert result.stdout.split() == ["False", "False"]
    for name in phiquant.__all__:
        assert getattr(phiquant, name) is not None
