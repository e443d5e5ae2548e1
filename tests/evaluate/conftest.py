"""Models and texts for the evaluation tests.

The fixture checkpoints have random weights with a small output head, so every next-token distribution is
nearly uniform and every perplexity is close to the vocabulary size, whatever the code does.  The
evaluation tests sharpen the head (x SHARPEN) so distributions are peaked and differ from token to token:
a wrong window, target or BOS then changes perplexity a lot, and quantization types differ clearly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from phiquant import api
from phiquant.bundled import heldout_text_path
from tests.fixtures.broken_checkpoints import copy_checkpoint, rewrite_tensor, safetensors_file_holding
from tests.fixtures.phi3_specs import PHI35_MINI

SHARPEN = 3.0
LADDER = ("Q8_0", "Q4_K_M", "Q2_K")
TEXT_CHARACTERS = 30_000  # about 7500 tokens: 14 windows of 512


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Reference caches (and the runtime probe verdicts) of this session only."""
    directory = tmp_path_factory.mktemp("phiquant-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PHIQUANT_CACHE", str(directory))
    yield directory
    patcher.undo()


@pytest.fixture(scope="session")
def sharp_checkpoint(shared_phi3_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = copy_checkpoint(
        shared_phi3_checkpoint(PHI35_MINI), tmp_path_factory.mktemp("sharp") / "ckpt"
    )
    head = load_file(str(safetensors_file_holding(checkpoint, "lm_head.weight")))["lm_head.weight"]
    rewrite_tensor(checkpoint, "lm_head.weight", (head.float() * SHARPEN).to(torch.bfloat16))
    return checkpoint


@pytest.fixture(scope="session")
def sharp_gguf(sharp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`sharp_gguf("f32")`: the sharpened checkpoint converted, once per session per type."""
    directory = tmp_path_factory.mktemp("sharp-gguf")
    made: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in made:
            made[outtype] = api.convert(
                sharp_checkpoint, directory / f"sharp-{outtype.upper()}.gguf", outtype
            ).path
        return made[outtype]

    return get


@pytest.fixture(scope="session")
def ladder(sharp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """F16 and the LADDER types of the sharpened model, side by side in one directory."""
    directory = tmp_path_factory.mktemp("ladder")
    result = api.quantize(sharp_checkpoint, ["F16", *LADDER], directory)
    return {f.type: f.path for f in result.files}


@pytest.fixture(scope="session")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "heldout-part.txt"
    path.write_text(heldout_text_path().read_text(encoding="utf-8")[:TEXT_CHARACTERS], encoding="utf-8")
    return path
