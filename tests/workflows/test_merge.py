"""`merge` as a workflow: where the merged file goes, and what it refuses before writing anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiquant import api
from phiquant.errors import PhiquantError
from tests.fixtures.gguf_fixtures import ConvertedGGUF, copy_shards
from tests.fixtures.phi3_specs import PHI35_MINI
from tests.gguf_io.split_reference import split_with_gguf_py


def test_the_merged_file_takes_the_shards_name_beside_them(
    split_f16: list[Path], unsplit_f16: Path, tmp_path: Path
) -> None:
    copies = copy_shards(split_f16, tmp_path / "m")
    merged = api.merge(copies[0])
    assert merged.path == copies[0].with_name(unsplit_f16.name)  # the name quantize gives the unsplit file
    assert merged.path.read_bytes() == unsplit_f16.read_bytes()
    with pytest.raises(PhiquantError, match="already exists; give --force"):
        api.merge(copies[0])
    assert api.merge(copies[0], overwrite=True).path == merged.path


def test_a_file_llama_gguf_split_merged_is_not_merged_again(
    converted_gguf: ConvertedGGUF, tmp_path: Path
) -> None:
    """Its split.count is 0, which llama.cpp reads as a whole model (docs/gguf_split.md §3 and §4)."""
    (merged_by_llama,) = split_with_gguf_py(
        converted_gguf(PHI35_MINI, "f16"), tmp_path / "m", max_tensors=1000, recorded_count=0
    )
    with pytest.raises(PhiquantError, match=r"not a split model \(split.count 0"):
        api.merge(merged_by_llama, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
