"""What `quantize` is asked to do, as frozen request objects checked when they are made.

A request has three parts: the source (`SourceOptions`), what to make (`Presets`, with their
`Overrides`, or one file under a size budget, `MaxSize` or `TargetBpw`) and how to run (`RunOptions`).
Presets and a budget are different types, so a request cannot ask for both, and overrides exist
only under presets, because a budget chooses every tensor's type itself.  Each field carries its
command-line flag (workflows.flags); `QuantizeRequest.from_options` builds a request from the flat
options of `quantize(...)` and the CLI, and refuses contradictory ones with one PhiquantError that
names the flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.gguf_io.mmproj_writer import DEFAULT_MMPROJ_TYPE, MMPROJ_TYPES, parse_mmproj_type
from phiquant.gguf_io.split import SplitLimits
from phiquant.quant.budget import parse_size
from phiquant.quant.budget_plan import BudgetRequest
from phiquant.quant.types import parse_ggml_type, parse_preset
from phiquant.workflows.convert import split_limits
from phiquant.workflows.flags import Flag, flag, flag_fields, part, required


def tensor_type_override(text: str) -> tuple[str, str]:
    """REGEX=TYPE, split at the last '=' so patterns may contain '='."""
    pattern, separator, type_name = text.rpartition("=")
    if not separator or not pattern or not type_name:
        raise PhiquantError(f"--tensor-type wants REGEX=TYPE, got {text!r}")
    return pattern, type_name


@dataclass(frozen=True)
class SourceOptions:
    """What is read: the model, and the importance matrix that goes with it."""

    source: str | Path = required(
        Flag(
            ("source",),
            "Hugging Face model directory, a model id (org/name[@revision]) in the local Hugging Face cache, "
            "or an F32/F16/BF16 GGUF",
            metavar="SRC",
        )
    )
    imatrix: str | Path | None = flag(
        None,
        Flag(
            ("--imatrix",),
            "importance matrix (llama.cpp GGUF or legacy .dat); 'auto' computes one over the bundled "
            "calibration text (cached) when a chosen type uses it",
            metavar="FILE|auto",
        ),
    )
    allow_requantize: bool = flag(
        False, Flag(("--allow-requantize",), "accept an already quantized GGUF source")
    )
    text_only: bool = flag(
        False,
        Flag(
            ("--text-only",),
            "multimodal checkpoints (Phi-4-multimodal): convert the language model alone, without the "
            "vision/audio encoders and their LoRA adapters (the model's own text-only path)",
        ),
    )
    mmproj_type: str = flag(
        DEFAULT_MMPROJ_TYPE,
        Flag(
            ("--mmproj-type",),
            "vision checkpoints (Phi-4-reasoning-vision): the type of the projector file written beside the "
            "model, <name>-mmproj-<TYPE>.gguf (default f16; never the text types, as llama.cpp)",
            choices=tuple(MMPROJ_TYPES),
        ),
    )
    allow_pickle: bool = flag(
        False,
        Flag(
            ("--allow-pickle",),
            "read a checkpoint that has only PyTorch pickles (pytorch_model.bin) with torch's weights-only "
            "loader, which never runs code from the file (needs torch: pip install 'phiquant[pickle]')",
        ),
    )

    def __post_init__(self) -> None:
        parse_mmproj_type(self.mmproj_type)


@dataclass(frozen=True)
class Overrides:
    """Types forced on top of a preset's rules (llama-quantize's --tensor-type and friends)."""

    tensor_types: tuple[tuple[str, str], ...] = flag(
        (),
        Flag(
            ("--tensor-type",),
            "force a type on tensors whose name matches REGEX (searched, not anchored); the first "
            "matching pattern wins and takes precedence over the preset's rules, but not over "
            "--output-type/--embedding-type; repeatable",
            metavar="REGEX=TYPE",
            parse=tensor_type_override,
            repeat=True,
        ),
    )
    output_type: str | None = flag(None, Flag(("--output-type",), "type for output.weight", metavar="TYPE"))
    embedding_type: str | None = flag(
        None, Flag(("--embedding-type",), "type for token_embd.weight", metavar="TYPE")
    )
    pure: bool = flag(False, Flag(("--pure",), "the preset's default type everywhere, no mix rules"))

    def __post_init__(self) -> None:
        for pattern, type_name in self.tensor_types:
            try:
                re.compile(pattern)
            except re.error as error:
                raise PhiquantError(
                    f"--tensor-type pattern {pattern!r} is not a valid regular expression: {error}"
                ) from None
            parse_ggml_type(type_name)  # unknown types fail here with the list of valid ones
        for named in (self.output_type, self.embedding_type):
            if named is not None:
                parse_ggml_type(named)


@dataclass(frozen=True)
class Presets:
    """A ladder of llama.cpp file types, written in one pass, each with the same overrides."""

    types: tuple[str, ...] = required(
        Flag(
            ("-t", "--type"),
            "llama.cpp file type (Q4_K_M, Q8_0, IQ4_XS, ...); repeat for a ladder written in one pass "
            "(not with --max-size/--target-bpw)",
            metavar="TYPE",
            repeat=True,
        )
    )
    overrides: Overrides = part(Overrides())

    def __post_init__(self) -> None:
        if not self.types:
            raise PhiquantError("give at least one quantization type")
        for name in self.types:
            parse_preset(name)  # unknown types fail here with the list of valid ones


@dataclass(frozen=True)
class MaxSize:
    """One file of at most `max_size` bytes, each tensor's type chosen by the budget planner."""

    max_size: int = required(
        Flag(
            ("--max-size",),
            "one file no larger than SIZE (e.g. 2.1G, 850M, 512MiB), each tensor's type chosen to minimise "
            "the predicted KL divergence; --dry-run prints the plan",
            metavar="SIZE",
            parse=parse_size,
            exclusive="budget",
        )
    )

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise PhiquantError(f"--max-size must be at least 1 byte, not {self.max_size}")

    def budget(self) -> BudgetRequest:
        return BudgetRequest(max_bytes=self.max_size)


@dataclass(frozen=True)
class TargetBpw:
    """One file of `target_bpw` bits per weight over all tensors, as llama.cpp reports it."""

    target_bpw: float = required(
        Flag(
            ("--target-bpw",),
            "as --max-size, with the budget in bits per weight over all tensors (as llama.cpp reports it)",
            metavar="BITS",
            type=float,
            exclusive="budget",
        )
    )

    def __post_init__(self) -> None:
        if not 0 < self.target_bpw <= 32:
            raise PhiquantError(f"--target-bpw must be between 0 and 32 bits, not {self.target_bpw}")

    def budget(self) -> BudgetRequest:
        return BudgetRequest(target_bpw=self.target_bpw)


@dataclass(frozen=True)
class RunOptions:
    """Where and how the files are planned and written."""

    output_dir: str | Path = flag(
        ".", Flag(("-o", "--output-dir"), "where to write (default: here)", metavar="DIR")
    )
    threads: int | None = flag(
        None, Flag(("--threads",), "quantization threads (default: all cores)", metavar="N", type=int)
    )
    allow_fallback: bool = flag(
        False,
        Flag(
            ("--allow-fallback",),
            "where a type cannot apply (rows not a multiple of its block), use llama.cpp's substitute "
            "and report it, instead of stopping",
        ),
    )
    allow_nonfinite: bool = flag(
        False, Flag(("--allow-nonfinite",), "write F32/F16/BF16 weights holding NaN/Inf")
    )
    split_max_size: int | str | None = flag(
        None,
        Flag(
            ("--split-max-size",),
            "write each file as shards <name>-00001-of-0000N.gguf of at most SIZE of tensor data "
            "(e.g. 48G, 500M; decimal units as llama.cpp's tools); llama.cpp loads the first shard",
            metavar="SIZE",
            exclusive="split",
        ),
    )
    split_max_tensors: int | None = flag(
        None,
        Flag(
            ("--split-max-tensors",),
            "write each file as shards of at most N tensors",
            metavar="N",
            type=int,
            exclusive="split",
        ),
    )
    dry_run: bool = flag(False, Flag(("--dry-run",), "print the per-tensor plan and sizes; write nothing"))

    def __post_init__(self) -> None:
        self.split()  # a bad shard limit is refused when the request is made

    def split(self) -> SplitLimits | None:
        return split_limits(self.split_max_size, self.split_max_tensors)


Make = Presets | MaxSize | TargetBpw

# The parts whose fields are `quantize`'s flags, in the order `phiquant quantize --help` lists them:
# what to make, what is read, how to run.
FLAG_PARTS: tuple[type, ...] = (Presets, MaxSize, TargetBpw, Overrides, SourceOptions, RunOptions)


def option_names() -> list[str]:
    return [field.name for part in FLAG_PARTS for field, _ in flag_fields(part)]


@dataclass(frozen=True)
class QuantizeRequest:
    source: SourceOptions
    make: Make
    run: RunOptions = RunOptions()

    @property
    def budget(self) -> BudgetRequest | None:
        return None if isinstance(self.make, Presets) else self.make.budget()

    @property
    def overrides(self) -> Overrides:
        return self.make.overrides if isinstance(self.make, Presets) else Overrides()

    @classmethod
    def from_options(cls, **options: Any) -> QuantizeRequest:
        """A request from the flat options `quantize(...)` and the CLI take (`option_names()`); an
        option left out or None is its default."""
        unknown = sorted(set(options) - set(option_names()))
        if unknown:
            raise TypeError(f"unknown quantize option(s): {', '.join(unknown)}")
        given = {name: value for name, value in options.items() if value is not None}
        types = given.pop("types", ())
        types = (types,) if isinstance(types, str) else tuple(types)
        given["tensor_types"] = tuple(tuple(pair) for pair in given.get("tensor_types", ()))
        overrides = _part(Overrides, given)
        return cls(_part(SourceOptions, given), _make(types, overrides, given), _part(RunOptions, given))


def _part(part: type[Any], given: dict[str, Any]) -> Any:
    return part(**{field.name: given[field.name] for field, _ in flag_fields(part) if field.name in given})


def _make(types: tuple[str, ...], overrides: Overrides, given: dict[str, Any]) -> Make:
    if "max_size" not in given and "target_bpw" not in given:
        return Presets(types, overrides)
    if "max_size" in given and "target_bpw" in given:
        raise PhiquantError("give --max-size or --target-bpw, not both")
    if types:
        raise PhiquantError("a size budget chooses every tensor's type: give no -t/--type with it")
    if overrides != Overrides():
        raise PhiquantError(
            "a size budget chooses every tensor's type: --tensor-type, --output-type, --embedding-type "
            "and --pure do not combine with it"
        )
    return MaxSize(given["max_size"]) if "max_size" in given else TargetBpw(given["target_bpw"])
