"""A split model in the card (one row, the command that makes the same shards) and for Ollama (which
reads one file: the Modelfile names the merged file and says how to make it; card and Modelfile give
`phiquant merge`, whose file is the unsplit one)."""

from __future__ import annotations

import shlex
from pathlib import Path

from phiquant import api
from tests.cli.run import run_phiquant
from tests.fixtures.gguf_fixtures import ConvertedGGUF
from tests.fixtures.phi3_specs import PHI35_MINI


def test_card_lists_a_split_model_once_with_the_command_that_makes_its_shards(
    converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    source = converted_gguf(PHI35_MINI, "f16")
    made = api.quantize(source, ["Q8_0"], tmp_path / "files", split_max_size="9M").files[0]
    assert len(made.shards) > 2
    card = api.model_card(tmp_path / "files", base_model="microsoft/Phi-3.5-mini-instruct", write=False)
    (row,) = card.files
    assert (row.name, row.shards) == (made.path.name, len(made.shards))
    assert row.file_size == made.file_size
    assert f"| {made.path.name} (+{len(made.shards) - 1} more shards) |" in card.text
    command = next(line for line in card.text.splitlines() if line.startswith("phiquant quantize"))
    option, value = command.split(" -o ")[0].split()[-2:]
    assert option == "--split-max-size"
    again = api.quantize(source, ["Q8_0"], tmp_path / "again", split_max_size=int(value)).files[0]
    assert [p.name for p in again.shards] == [p.name for p in made.shards]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(again.shards, made.shards, strict=True))
    merged = made.path.name.replace(f"-00001-of-{len(made.shards):05d}", "")
    merge_line = next(line for line in card.text.splitlines() if line.startswith("phiquant merge "))
    assert merge_line == (
        f"phiquant merge {made.path.name} -o {merged}  # Ollama reads one file "
        f"(or llama.cpp's llama-gguf-split --merge {made.path.name} {merged})"
    )
    ran = run_phiquant(*shlex.split(merge_line, comments=True)[1:], cwd=tmp_path / "files")
    assert ran.returncode == 0, ran.stderr
    whole = api.quantize(source, ["Q8_0"], tmp_path / "whole").files[0].path
    assert whole.name == merged and (tmp_path / "files" / merged).read_bytes() == whole.read_bytes()


def test_modelfile_of_a_split_model_names_the_merged_file(
    converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    made = api.quantize(converted_gguf(PHI35_MINI, "f16"), ["Q8_0"], tmp_path, split_max_tensors=10).files[0]
    modelfile = api.ollama_modelfile(made.path, tmp_path / "Modelfile")
    merged = made.path.name.replace("-00001-of-00003", "")
    assert modelfile.merge_command == f"phiquant merge {made.path} -o {tmp_path / merged}"
    lines = modelfile.text.splitlines()
    assert lines[:3] == [
        "# Ollama reads one GGUF file: merge the shards first with",
        f"# {modelfile.merge_command}",
        f"# (or llama.cpp's llama-gguf-split --merge {made.path} {tmp_path / merged}, which keeps split.* "
        "keys in the file)",
    ]
    assert f"FROM ./{merged}" in lines
    ran = run_phiquant(*shlex.split(modelfile.merge_command)[1:])
    assert ran.returncode == 0, ran.stderr
    assert api.inspect(tmp_path / merged).shards == []  # one file, as Ollama reads it
