"""What phiquant does with a GGUF file it is given, as one call for the fuzzers: read it, inspect it
(human and --json), quantize it, and read the runtime's facts from it (context memory, special
tokens).  A file may be refused with a PhiquantError at any step; no step may raise anything else."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from hypothesis import event

from phiquant import api, cli
from phiquant.errors import PhiquantError
from phiquant.gguf_io import GGUFFile, read_gguf
from phiquant.gguf_io.writer import TEMP_SUFFIX
from phiquant.runtime import memory
from phiquant.runtime.prompt import SpecialTokenMatcher
from tests.security.fuzzing import accepts_or_refuses_cleanly


def run_cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(list(argv))
    assert code in (0, 2), err.getvalue()
    return code


def exercise_gguf_commands(path: Path, out: Path) -> None:
    """read_gguf, then what `inspect` and `quantize` do with a file it accepts."""
    parsed = accepts_or_refuses_cleanly(lambda: read_gguf(path))
    if isinstance(parsed, PhiquantError):
        assert str(path) in str(parsed)
        event(f"refused: {parsed.message.split(':')[0][:40]}")
        return
    accepts_or_refuses_cleanly(lambda: runtime_facts(parsed))
    run_cli("inspect", str(path))
    run_cli("inspect", str(path), "--json")
    run_cli("quantize", str(path), "-t", "Q8_0", "--dry-run", "--allow-requantize", "-o", str(out))
    out.mkdir(exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    result = accepts_or_refuses_cleanly(lambda: api.quantize(path, "Q8_0", out, allow_requantize=True))
    event("quantize " + ("refused" if isinstance(result, PhiquantError) else "wrote a file"))
    if isinstance(result, PhiquantError):
        assert list(out.iterdir()) == [], "a refused quantization left files behind"
    else:
        (written,) = result.files
        read_gguf(written.path)  # what phiquant writes, phiquant (and llama.cpp) can read
    assert not any(p.name.endswith(TEMP_SUFFIX) for p in out.iterdir())


def runtime_facts(gguf: GGUFFile) -> None:
    """What generate/chat/serve compute from the header before llama.cpp loads the file."""
    shape = memory.ModelShape.from_gguf(gguf)
    n_ctx = memory.default_context_size(shape)
    memory.check_context_size(shape, max(1, n_ctx))
    memory.context_warnings(shape, n_ctx)
    memory.check_kv_cache_fits(shape, max(1, n_ctx), available=1 << 30)
    matcher = SpecialTokenMatcher.from_gguf(gguf)
    if matcher is not None:
        matcher.split("<|user|> hello <|end|>\n<|assistant|>")
