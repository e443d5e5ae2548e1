"""The budget allocator (quant.budget): pure functions checked against brute force and by construction."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phiquant.errors import PhiquantError
from phiquant.quant.budget import (
    Sensitivities,
    TensorOptions,
    TypeOption,
    allocate,
    convex_hull,
    minimum_bytes,
    parse_size,
    predicted_loss_of,
)
from phiquant.quant.types import GGMLType
from phiquant.workflows.budget.calibration import (
    layer_bands,
    load_profile,
    save_profile,
    sensitivities_from_kld,
)

LADDER = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_0)
BITS = {
    GGMLType.Q2_K: 2.625,
    GGMLType.Q3_K: 3.4375,
    GGMLType.Q4_K: 4.5,
    GGMLType.Q5_K: 5.5,
    GGMLType.Q6_K: 6.5625,
    GGMLType.Q8_0: 8.5,
}


def tensor(name: str, n: int, scale: float, role: str = "ffn_up", layer: int | None = None) -> TensorOptions:
    """Errors shrinking by 4x per extra bit, as uniform quantization does."""
    return TensorOptions(
        name, role, tuple(TypeOption(t, int(n * BITS[t] / 8), scale * 4.0 ** -BITS[t]) for t in LADDER), layer
    )


def brute_force(tensors: list[TensorOptions], budget: int) -> float:
    best = float("inf")
    for choice in itertools.product(*(t.options for t in tensors)):
        if sum(o.n_bytes for o in choice) <= budget:
            best = min(best, sum(o.error for o in choice))
    return best


def test_convex_hull_drops_dominated_and_concave_options() -> None:
    options = [
        TypeOption(GGMLType.Q2_K, 100, 1.0),
        TypeOption(GGMLType.Q3_K, 150, 0.9),  # above the chord from Q2_K to Q4_K: never worth it alone
        TypeOption(GGMLType.Q4_K, 200, 0.2),
        TypeOption(GGMLType.Q5_K, 250, 0.3),  # bigger and worse: dominated
    ]
    assert [o.type for o in convex_hull(options, 1.0)] == [GGMLType.Q2_K, GGMLType.Q4_K]


@settings(max_examples=40, deadline=None)
@given(
    scales=st.lists(st.floats(0.1, 100.0), min_size=2, max_size=4),
    sizes=st.lists(st.integers(1, 8), min_size=4, max_size=4),
    fraction=st.floats(0.0, 1.0),
)
def test_greedy_is_within_one_upgrade_of_the_brute_force_optimum(scales, sizes, fraction) -> None:
    tensors = [tensor(f"t{i}", 256 * sizes[i], s) for i, s in enumerate(scales)]
    low, high = minimum_bytes(tensors), sum(max(o.n_bytes for o in t.options) for t in tensors)
    budget = int(low + fraction * (high - low))
    allocation = allocate(tensors, budget, Sensitivities({}))
    assert allocation.tensor_bytes <= budget
    optimum = brute_force(tensors, budget)
    assert allocation.predicted_loss >= optimum - 1e-12
    # The Lagrangian greedy is optimal on hull points; elsewhere it may miss by at most one upgrade step,
    # which the optimum with a budget one largest-step higher bounds.
    largest_step = max(b.n_bytes - a.n_bytes for t in tensors for a, b in zip(t.options, t.options[1:]))
    assert (
        allocation.predicted_loss <= brute_force(tensors, budget - largest_step) + 1e-12
        or budget - largest_step < low
    )


def test_more_sensitive_role_gets_more_bits() -> None:
    tensors = [tensor("a", 4096, 1.0, "attn_qkv"), tensor("b", 4096, 1.0, "ffn_up")]
    sensitivities = Sensitivities({"attn_qkv": 10.0, "ffn_up": 1.0})
    allocation = allocate(tensors, int(2 * 4096 * 4.5 / 8), sensitivities)
    assert BITS[allocation.types["a"]] > BITS[allocation.types["b"]]
    assert allocation.predicted_loss == pytest.approx(
        predicted_loss_of(tensors, allocation.types, sensitivities)
    )


def test_more_sensitive_layer_gets_more_bits() -> None:
    tensors = [tensor("blk.0.ffn_up", 4096, 1.0, layer=0), tensor("blk.1.ffn_up", 4096, 1.0, layer=1)]
    allocation = allocate(tensors, int(2 * 4096 * 4.5 / 8), Sensitivities({"ffn_up": 1.0}, {0: 8.0, 1: 1.0}))
    assert BITS[allocation.types["blk.0.ffn_up"]] > BITS[allocation.types["blk.1.ffn_up"]]


def test_budget_below_the_cheapest_types_names_the_minimum() -> None:
    tensors = [tensor("a", 1024, 1.0)]
    with pytest.raises(PhiquantError, match="need 336"):
        allocate(tensors, 100, Sensitivities({}))


def test_sensitivity_is_kld_increase_per_error_increase() -> None:
    tensors = [tensor("a", 1024, 1.0, "attn_qkv"), tensor("b", 1024, 1.0, "ffn_up")]
    increase = 4.0**-3.4375 - 4.0**-8.5
    fitted = sensitivities_from_kld(tensors, 0.001, {"attn_qkv": 0.001 + 2 * increase, "ffn_up": 0.0005})
    assert fitted.roles["attn_qkv"] == pytest.approx(2.0)
    assert 0 < fitted.roles["ffn_up"] < 0.1  # KLD went down: noise; floored at a share of the median
    assert fitted.layers == {}


def _probe_increase(tensors: list[TensorOptions], members, truth: Sensitivities) -> float:
    """The KLD increase a probe of `members` gives when KLD is additive and `truth` is the real model."""
    return sum(truth.of(t) * (t.options[1].error - t.options[-1].error) for t in tensors if members(t))


def test_role_and_layer_factors_are_recovered_from_role_and_layer_probes() -> None:
    # a model whose first and last layers are 8x as sensitive, and whose qkv is 3x ffn_up; the output
    # matrix sits outside the layers.  Probes of each role and each layer determine every tensor's product.
    roles = ("attn_qkv", "ffn_up")
    tensors = [tensor(f"blk.{i}.{r}", 4096, 1.0 + i / 10, r, i) for i in range(6) for r in roles]
    tensors.append(tensor("output", 16384, 1.0, "output"))
    truth = Sensitivities(
        {"attn_qkv": 3.0, "ffn_up": 1.0, "output": 20.0}, {i: 8.0 if i in (0, 5) else 1.0 for i in range(6)}
    )
    base = 0.001
    role_kld = {
        r: base + _probe_increase(tensors, lambda t, r=r: t.role == r, truth) for r in [*roles, "output"]
    }
    band_kld = {(i,): base + _probe_increase(tensors, lambda t, i=i: t.layer == i, truth) for i in range(6)}
    fitted = sensitivities_from_kld(tensors, base, role_kld, band_kld)
    for t in tensors:
        assert fitted.of(t) == pytest.approx(truth.of(t), rel=1e-3), t.name
    # the role-only fit (no layer probes) cannot tell layer 0 from layer 2
    role_only = sensitivities_from_kld(tensors, base, role_kld)
    assert role_only.of(tensors[0]) == role_only.of(tensors[4])


@pytest.mark.parametrize(
    ("n_layers", "sizes"), [(4, [1] * 4), (8, [1] * 8), (32, [4] * 8), (10, [1, 1, 1, 2, 1, 1, 1, 2])]
)
def test_layers_are_probed_in_at_most_eight_contiguous_bands(n_layers: int, sizes: list[int]) -> None:
    bands = layer_bands(range(n_layers))
    assert [len(b) for b in bands] == sizes
    assert [layer for band in bands for layer in band] == list(range(n_layers))


def test_profile_round_trips_through_the_cache(tmp_path) -> None:
    tensors = [tensor("blk.3.ffn_up", 1024, 1.0, "ffn_up", 3), tensor("output", 1024, 2.0, "output")]
    sensitivities = Sensitivities({"ffn_up": 0.5, "output": 7.0}, {3: 2.5}, worst_measured_kld=0.25)
    save_profile(tmp_path / "profile.json", tensors, sensitivities)
    assert load_profile(tmp_path / "profile.json") == (tensors, sensitivities)
    (tmp_path / "old.json").write_text('{"tensors": [], "sensitivities": {"ffn_up": 1.0}}')  # version 1
    assert load_profile(tmp_path / "old.json") is None
    # version 2: no worst measured KLD
    (tmp_path / "v2.json").write_text('{"tensors": [], "roles": {"ffn_up": 1.0}, "layers": {}}')
    assert load_profile(tmp_path / "v2.json") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("850M", 850_000_000), ("2.5G", 2_500_000_000), ("512MiB", 512 * 2**20), ("1234", 1234)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1G", "big", "3X"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(PhiquantError, match="--max-size"):
        parse_size(text)
