"""Which files are one model, which one is the reference, and the bad input `phiquant eval` refuses."""

from __future__ import annotations

import shutil

import pytest

from phiquant.errors import PhiquantError
from phiquant.evaluate.files import (
    content_hash,
    describe,
    find_reference,
    model_difference,
    require_same_model,
)
from tests.cli.run import assert_one_line_error, run_phiquant
from tests.evaluate.rewritten import with_other_architecture, with_other_vocabulary


def test_files_of_one_model_differ_only_in_types(ladder) -> None:
    files = [describe(p) for p in ladder.values()]
    assert len({f.identity for f in files}) == 1
    assert {f.file_type for f in files} == set(ladder)
    assert all(model_difference(files[0], f) is None for f in files)
    bpw = {f.file_type: f.bits_per_weight for f in files}
    assert bpw["F16"] > bpw["Q8_0"] > bpw["Q4_K_M"] > bpw["Q2_K"]


def test_reference_defaults_to_the_most_faithful_unquantized_file(ladder, sharp_gguf, tmp_path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    for name, path in (("m-Q4_K_M.gguf", ladder["Q4_K_M"]), ("m-F16.gguf", ladder["F16"])):
        shutil.copy(path, directory / name)
    quantized = describe(directory / "m-Q4_K_M.gguf")
    assert find_reference([quantized]).path.name == "m-F16.gguf"  # found beside the file
    shutil.copy(sharp_gguf("bf16"), directory / "m-BF16.gguf")
    assert find_reference([quantized]).path.name == "m-BF16.gguf"
    shutil.copy(sharp_gguf("f32"), directory / "m-F32.gguf")
    assert find_reference([quantized]).path.name == "m-F32.gguf"


def test_no_reference_when_no_unquantized_file_is_there(ladder, tmp_path) -> None:
    shutil.copy(ladder["Q8_0"], tmp_path / "only-Q8_0.gguf")
    assert find_reference([describe(tmp_path / "only-Q8_0.gguf")]) is None


def test_another_vocabulary_is_another_model(ladder, tmp_path) -> None:
    other = describe(with_other_vocabulary(ladder["F16"], tmp_path / "other-vocab.gguf"))
    reference = describe(ladder["F16"])
    assert "vocabulary" in model_difference(reference, other)
    with pytest.raises(PhiquantError, match="not the same model as the reference"):
        require_same_model(reference, [other])


def test_another_architecture_is_another_model(ladder, tmp_path) -> None:
    other = describe(with_other_architecture(ladder["F16"], tmp_path / "other-arch.gguf"))
    assert model_difference(describe(ladder["F16"]), other) == "architecture phi2, not phi3"


def test_content_hash_sees_the_weights_not_the_file_name(ladder, tmp_path) -> None:
    copy = shutil.copy(ladder["F16"], tmp_path / "renamed.gguf")
    assert content_hash(describe(copy).gguf) == content_hash(describe(ladder["F16"]).gguf)
    data = bytearray(copy.read_bytes())
    tensor = describe(copy).gguf.tensors[5]
    data[tensor.offset + 10] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert content_hash(describe(copy).gguf) != content_hash(describe(ladder["F16"]).gguf)


# -- bad input through the command line: one line, exit 2, no traceback ---------------------------------


@pytest.mark.slow
def test_text_shorter_than_one_window_is_refused(ladder, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("A few words only.", encoding="utf-8")
    result = run_phiquant("eval", ladder["Q8_0"], "--text", short, "--ref", ladder["F16"])
    assert_one_line_error(result, "short.txt", "shorter than one window of --ctx 512")


@pytest.mark.slow
def test_empty_text_is_refused(ladder, tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_one_line_error(run_phiquant("eval", ladder["Q8_0"], "--text", empty), "empty.txt", "0 tokens")


@pytest.mark.slow
def test_reference_with_another_vocabulary_is_refused(ladder, eval_text, tmp_path) -> None:
    other = with_other_vocabulary(ladder["F16"], tmp_path / "other-vocab.gguf")
    result = run_phiquant("eval", ladder["Q8_0"], "--ref", other, "--text", eval_text)
    assert_one_line_error(result, "not the same model as the reference other-vocab.gguf", "vocabulary")


@pytest.mark.slow
def test_reference_of_another_architecture_is_refused(ladder, eval_text, tmp_path) -> None:
    other = with_other_architecture(ladder["F16"], tmp_path / "other-arch.gguf")
    result = run_phiquant("eval", ladder["Q8_0"], "--ref", other, "--text", eval_text)
    assert_one_line_error(result, "Q8_0", "architecture phi3, not phi2")


@pytest.mark.slow
def test_empty_model_file_is_refused(tmp_path, eval_text) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert_one_line_error(run_phiquant("eval", empty, "--text", eval_text), "empty.gguf", "not a GGUF file")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda d: d / "missing.txt", ("missing.txt", "no such text file")),
        (
            lambda d: (d / "latin1.txt", (d / "latin1.txt").write_bytes(b"caf\xe9 " * 500))[0],
            ("latin1.txt", "not UTF-8"),
        ),
    ],
    ids=["missing", "not-utf8"],
)
def test_unreadable_texts_are_refused(ladder, tmp_path, make, fragments) -> None:
    assert_one_line_error(run_phiquant("eval", ladder["Q8_0"], "--text", make(tmp_path)), *fragments)


@pytest.mark.slow
def test_the_same_file_twice_is_refused(ladder, eval_text) -> None:
    result = run_phiquant("eval", ladder["Q8_0"], ladder["Q8_0"], "--text", eval_text)
    assert_one_line_error(result, "given twice")
