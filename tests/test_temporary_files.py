"""A signal that lands inside a step of writing an output is acted on after the step, never inside it,
so the registry of temporary paths always matches the disk (phiquant.temporary_files).

Each test sends the signal to this process from inside the step (a wrapped os/open call), which is
the worst moment a real Ctrl-C can pick; the step must finish, then the interrupt must arrive.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from phiquant import cli, temporary_files
from phiquant.gguf_io import GGUFOutput, TensorInfo, open_outputs


@pytest.fixture(autouse=True)
def clean_registry():
    temporary_files.remove_pending()
    yield
    temporary_files.remove_pending()


def interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_signal_while_creating_arrives_after_the_file_is_registered(tmp_path, monkeypatch) -> None:
    real_open = open

    def open_then_signal(*args, **kwargs):
        file = real_open(*args, **kwargs)
        interrupt_self()
        return file

    monkeypatch.setattr(temporary_files, "open", open_then_signal, raising=False)
    with pytest.raises(KeyboardInterrupt):
        temporary_files.create(tmp_path / "out.gguf")
    assert (tmp_path / ".out.gguf.phiquant-partial").exists()
    assert temporary_files.remove_pending() == [tmp_path / "out.gguf"]
    assert list(tmp_path.iterdir()) == []


def test_signal_between_the_renames_of_a_ladder_arrives_after_all_are_in_place(tmp_path, monkeypatch) -> None:
    files = [temporary_files.create(tmp_path / f"m-{n}.gguf") for n in range(3)]
    for partial in files:
        partial.file.write(b"complete")
    real_replace = os.replace

    def replace_then_signal(source, destination):
        real_replace(source, destination)
        interrupt_self()

    monkeypatch.setattr(temporary_files.os, "replace", replace_then_signal)
    with pytest.raises(KeyboardInterrupt):
        temporary_files.commit(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0.gguf", "m-1.gguf", "m-2.gguf"]
    assert all(p.read_bytes() == b"complete" for p in tmp_path.iterdir())
    assert temporary_files.remove_pending() == []


def test_signal_while_discarding_leaves_nothing_and_reports_the_file(tmp_path, monkeypatch) -> None:
    partial = temporary_files.create(tmp_path / "out.gguf")
    real_unlink = os.unlink

    def unlink_then_signal(path):
        real_unlink(path)
        interrupt_self()

    monkeypatch.setattr(temporary_files.os, "unlink", unlink_then_signal)
    with pytest.raises(KeyboardInterrupt):
        temporary_files.discard(partial)
    assert list(tmp_path.iterdir()) == []
    assert temporary_files.remove_pending() == [tmp_path / "out.gguf"]


def test_every_output_of_a_ladder_interrupted_while_opening_is_removed(tmp_path, monkeypatch) -> None:
    """The signal lands right after the second file of three is created, before the writer knows it."""
    tensors = [TensorInfo("a.weight", (32,), 0, 128)]
    outputs = [GGUFOutput(tmp_path / f"m-{n}.gguf", "tiny", [], tensors) for n in range(3)]
    real_create = temporary_files.create
    created = []

    def create_then_maybe_signal(path):
        partial = real_create(path)
        created.append(path)
        if len(created) == 2:
            interrupt_self()
        return partial

    monkeypatch.setattr(temporary_files, "create", create_then_maybe_signal)
    with pytest.raises(KeyboardInterrupt), open_outputs(outputs):
        raise AssertionError("the interrupt comes before the block")
    assert list(tmp_path.iterdir()) == []
    assert set(temporary_files.remove_pending()) == {tmp_path / "m-0.gguf", tmp_path / "m-1.gguf"}


def test_complete_ladder_commits_together(tmp_path) -> None:
    tensors = [TensorInfo("a.weight", (32,), 0, 128)]
    outputs = [GGUFOutput(tmp_path / f"m-{n}.gguf", "tiny", [], tensors) for n in range(2)]
    with open_outputs(outputs):
        for output in outputs:
            output.write(np.zeros(32, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0.gguf", "m-1.gguf"]
    assert temporary_files.remove_pending() == []


def test_scratch_folder_cut_short_on_exit_is_removed_by_the_cleanup(monkeypatch) -> None:
    real_remove = temporary_files._remove

    def interrupted_remove(path, *, report=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(temporary_files, "_remove", interrupted_remove)
    with pytest.raises(KeyboardInterrupt), temporary_files.temporary_directory("phiquant-test-") as folder:
        (folder / "probe.gguf").write_bytes(b"x")
    assert folder.exists()
    monkeypatch.setattr(temporary_files, "_remove", real_remove)
    assert temporary_files.remove_pending() == []  # scratch is not an output: removed, not reported
    assert not folder.exists()


def test_closing_message_says_what_was_removed_or_that_nothing_was(tmp_path) -> None:
    assert cli._cleanup_report() == "no partial output was left to remove"
    temporary_files.create(tmp_path / "m.gguf").file.close()
    assert cli._cleanup_report() == "partial output removed: m.gguf"
    assert list(tmp_path.iterdir()) == []


def test_signals_held_delivers_sigterm_to_the_handler_it_replaced(monkeypatch) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with temporary_files.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_atomic_text_write_never_leaves_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")

    def fail_midway(file):
        file.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        temporary_files.write_with(target, fail_midway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
