"""Shared oracle fixtures: synthetic models on disk, llama.cpp reference runs, and our own quantized bytes,
each computed once per session."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.quant.plan import QuantPlan
from phiquant.quant.quantize import quantize_rows
from phiquant.quant.types import PRESETS, TYPE_INFO, GGMLType, Preset
from tests.quant.llama_reference import ReferenceJob, ReferenceResult, dry_run_types, run_reference_jobs
from tests.quant.synthetic import SyntheticModel, random_imatrix, write_model

LLAMA_PRESETS: tuple[Preset, ...] = tuple(preset for preset in PRESETS if preset.in_llama_cpp)


class Oracle:
    """Writes models and imatrices once, runs llama.cpp on demand, caches what both sides produce."""

    def __init__(self, directory: Path, sweep_models: Sequence[SyntheticModel] = ()) -> None:
        self.directory = directory
        self.sweep_models = tuple(sweep_models)  # models whose sweeps to run together, in one child
        self._sweeps: dict[str, dict[tuple[str, bool], ReferenceResult]] = {}
        self._job_counter = 0

    @functools.cache  # noqa: B019 - the oracle lives for the whole session
    def model_data(self, model: SyntheticModel) -> dict[str, np.ndarray]:
        return write_model(model, self.model_path(model))

    def model_path(self, model: SyntheticModel) -> Path:
        return self.directory / f"{model.label}-f32.gguf"

    @functools.cache  # noqa: B019
    def imatrix(self, model: SyntheticModel) -> dict[str, np.ndarray]:
        entries = random_imatrix(model)
        np.savez(self.imatrix_path(model), **entries)
        return entries

    def imatrix_path(self, model: SyntheticModel) -> Path:
        return self.directory / f"{model.label}-imatrix.npz"

    def job(
        self, model: SyntheticModel, ftype: int, with_imatrix: bool = False, **options: object
    ) -> ReferenceJob:
        """A reference job on `model` writing to a fresh output path."""
        self.model_data(model)
        imatrix_path = None
        if with_imatrix:
            self.imatrix(model)
            imatrix_path = str(self.imatrix_path(model))
        self._job_counter += 1
        output = self.directory / f"{model.label}-out-{self._job_counter}.gguf"
        return ReferenceJob(
            str(self.model_path(model)), str(output), ftype, imatrix_path=imatrix_path, **options
        )  # type: ignore[arg-type]

    def run(self, jobs: Sequence[ReferenceJob]) -> list[ReferenceResult]:
        return run_reference_jobs(list(jobs))

    def preset_result(self, model: SyntheticModel, preset: Preset, with_imatrix: bool) -> ReferenceResult:
        """llama.cpp's output for one preset.  The first request runs the sweeps (every preset, with and
        without imatrix) of all models this session needs in one child process, so ggml builds its IQ
        tables once (seconds each) instead of once per model."""
        if model.label not in self._sweeps:
            models = [model] + [m for m in self.sweep_models if m != model and m.label not in self._sweeps]
            keys = [(m, p.name, imatrix) for m in models for imatrix in (False, True) for p in LLAMA_PRESETS]
            jobs = [self.job(m, int(PRESETS_BY_NAME[name].ftype), imatrix) for m, name, imatrix in keys]
            for (m, name, imatrix), result in zip(keys, self.run(jobs), strict=True):
                self._sweeps.setdefault(m.label, {})[(name, imatrix)] = result
        return self._sweeps[model.label][(preset.name, with_imatrix)]

    @functools.cache  # noqa: B019
    def one_preset_result(
        self, model: SyntheticModel, preset_name: str, with_imatrix: bool
    ) -> ReferenceResult:
        """One preset's output for tests that need only it: the sweep's when this process ran the sweep,
        else one job (test modules may run in other pytest-xdist workers than the sweep's)."""
        if model.label in self._sweeps:
            return self._sweeps[model.label][(preset_name, with_imatrix)]
        ftype = int(PRESETS_BY_NAME[preset_name].ftype)
        (result,) = self.run([self.job(model, ftype, with_imatrix)])
        return result

    @functools.cache  # noqa: B019
    def our_bytes(self, model: SyntheticModel, name: str, ggml_type: GGMLType, with_imatrix: bool) -> bytes:
        """Our quantization of one tensor (the same tensor and type recur across presets)."""
        data = self.model_data(model)[name]
        weights = self.imatrix(model).get(name) if with_imatrix else None
        return quantize_rows(data, ggml_type, weights, n_threads=2).tobytes()


PRESETS_BY_NAME = {preset.name: preset for preset in PRESETS}


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Oracle:
    # The models the selected tests are parametrized with: their sweeps are batched together.
    wanted = {
        item.callspec.params["model"]
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("model"), SyntheticModel)
    }
    return Oracle(tmp_path_factory.mktemp("quant-oracle"), sorted(wanted, key=lambda model: model.label))


def assert_types_equal_dry_run(result: ReferenceResult, make_plan: Callable[[], QuantPlan]) -> None:
    """Every tensor's type in our plan against a llama.cpp dry run of the same preset.  A dry run logs
    the types, and only warns where a real run refuses for want of an imatrix: we must refuse there."""
    try:
        plan = make_plan()
    except PhiquantError as error:
        assert "needs an importance matrix" in str(error)
        assert "will require an imatrix" in result.log
        return
    types = [(tensor.name, TYPE_INFO[tensor.target_type].ggml_name) for tensor in plan.tensors]
    assert types == dry_run_types(result.log)


def reference_layout(result: ReferenceResult) -> GGUFFile:
    assert result.succeeded, (
        f"llama.cpp failed (rc={result.return_code}, signal={result.signal}):\n{result.log[-4000:]}"
    )
    return read_gguf(result.job.output_path)


def reference_tensor_bytes(layout: GGUFFile, name: str) -> bytes:
    return layout.raw_bytes(layout.tensor(name)).tobytes()


def assert_plan_matches_reference(
    oracle: Oracle, model: SyntheticModel, plan: QuantPlan, layout: GGUFFile, with_imatrix: bool
) -> None:
    """Order, types, shapes, sizes and every tensor's bytes of our plan and quantizer against llama.cpp."""
    assert [t.name for t in plan.tensors] == [t.name for t in layout.tensors], "tensor order"
    assert [t.target_type for t in plan.tensors] == [t.ggml_type for t in layout.tensors], "types"
    assert [t.shape for t in plan.tensors] == [t.shape for t in layout.tensors]
    assert [t.target_bytes for t in plan.tensors] == [t.nbytes for t in layout.tensors], "tensor sizes"
    assert plan.data_section_bytes() == layout.file_size - layout.data_offset, "data section size"
    source = oracle.model_data(model)
    for tensor in plan.tensors:
        expected = reference_tensor_bytes(layout, tensor.name)
        if tensor.quantize:
            ours = oracle.our_bytes(model, tensor.name, tensor.target_type, with_imatrix)
        else:
            ours = source[tensor.name].tobytes()
        assert ours == expected, f"{tensor.name} ({tensor.target_type.name}) bytes differ"
