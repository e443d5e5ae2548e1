"""The model card (README.md beside the weights) and training_summary.json, from the run's measurements."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .corpus_splits import CorpusSplit
from .debian_corpus import CorpusSource
from .evaluation import Perplexity
from .model_files import HEAD_DIM, SLIDING_WINDOW, ModelShape
from .shipped_texts import LICENSE_FILE
from .token_stream import CONVERSATION_SHARE
from .trainer import TrainingPlan, TrainingResult


@dataclass(frozen=True)
class Evaluation:
    short_context: Perplexity
    long_context: Perplexity
    answers: dict[str, str]


@dataclass(frozen=True)
class TrainingSummary:
    name: str
    shape: ModelShape
    vocab_size: int  # config.vocab_size: embedding rows, padded
    tokenizer_tokens: int
    parameters: int
    weight_bytes: int
    source: CorpusSource
    split: CorpusSplit
    plan: TrainingPlan
    result: TrainingResult
    evaluation: Evaluation
    epoch_tokens: int  # tokens in one pass over the training stream (documents and conversations)
    run: dict  # wall time, CPU time, threads, load average
    command: str


CARD = """\
# {name}

A tiny language model with the **Phi-3.5-mini architecture** (`Phi3ForCausalLM`, LongRoPE, fused QKV and
gate/up projections, untied lm_head, Phi-3 SentencePiece tokenizer layout and chat tokens), trained from
scratch on the Python 3.11 documentation by phiquant's `tools/train_bundled_model.py`.  It is phiquant's
bundled default model: small enough to ship and to convert, quantize, evaluate and chat with in seconds,
and trained enough that perplexity and quantization damage mean something.  It contains no Microsoft
weights and knows only what the Python docs say, often garbled.

## Architecture

| | |
|---|---|
| architecture | `Phi3ForCausalLM` (`model_type: phi3`) |
| hidden size / intermediate size | {hidden} / {intermediate} (multiples of 256) |
| layers / attention heads / KV heads | {layers} / {heads} / {heads} (head_dim {head_dim}) |
| context | trained at {original} tokens (`original_max_position_embeddings`); LongRoPE long factors up to {max_context} (`max_position_embeddings`) |
| `rope_scaling` | `type: longrope`, {factor_count} short and {factor_count} long factors (short {short_range}, long {long_range}) |
| sliding window | {sliding_window} (as Phi-3.5: larger than any context) |
| vocabulary | {tokenizer_tokens} tokens ({pieces} SentencePiece BPE pieces + 11 Phi-3 chat tokens), `vocab_size` {vocab_size} (padded to a multiple of 64 like Phi-3's 32011 -> 32064) |
| parameters | {parameters:,} (embedding and lm_head {embedding_parameters:,} each) |
| weights | `model.safetensors`, BF16, {weight_mb:.1f} MB, single file |

Files mirror microsoft/Phi-3.5-mini-instruct: `config.json` keys in its order (without `auto_map`: no
remote code ships), `generation_config.json` with `eos_token_id` `{eos_ids}` (`<|end|>`, `<|assistant|>`,
`<|endoftext|>`), `tokenizer.model`, `tokenizer.json` (Prepend/Replace normalizer, no pre-tokenizer, BPE
with byte fallback), `tokenizer_config.json` with Phi-3.5's chat template, `special_tokens_map.json`,
`added_tokens.json`.

## Training data

Debian package `{package}` version `{version}` (.deb sha256 `{deb_sha256}`): the reStructuredText
sources of the Python 3.11 documentation, rendered to plain text (code as Markdown fences).  License: PSF
License Agreement version 2 (see `{license_file}`); documentation code examples are also Zero-Clause BSD.
Copyright © 2001-2023 Python Software Foundation.

Whole documents are split, independent of the seed: {train_documents} documents train the model
({train_characters:,} characters), {heldout_documents} are held out for evaluation (`texts/heldout.txt`)
and {calibration_documents} make the calibration text (`texts/calibration.txt`); the model saw neither.
Each epoch also turns {conversation_percent}% of the documented functions, classes, glossary terms and
sections of the training documents into Phi-3.5 chat conversations (template question, the docs' first
paragraph as the answer, ended by `<|end|>`), so the model answers in the chat format and ends its turn.

## Training

```
{command}
```

Seed {seed}; {steps} AdamW steps of {tokens_per_step} tokens ({tokens:,} tokens, ~{epochs:.1f} passes over the
training text); every {long_every}th step uses {long_length}-token sequences so the LongRoPE long factors are
trained too (llama.cpp uses them for the whole sequence once its context exceeds {original}).  Peak learning
rate {peak_lr}, {warmup} warmup steps, cosine decay to {final_fraction:.0%}; {precision}.

Training took {train_minutes:.1f} minutes of wall time on {threads} CPU threads and {train_cpu_minutes:.1f}
CPU-minutes: the process had {utilisation:.0%} of {threads} cores on average, the rest going to other
processes sharing the machine (load average at the end: {load}).  With the cores to itself it would need
about {uncontended_minutes:.0f} minutes (CPU time / threads).  The whole command, with download, preparation,
export and evaluation, took {wall_minutes:.1f} minutes of wall time in its last invocation.

## Results

| | loss | perplexity |
|---|---|---|
| training (last 50 steps) | {train_loss:.3f} | {train_ppl:.1f} |
| held-out, {short_windows} windows of {short_window} tokens (short factors) | {short_loss:.3f} | {short_ppl:.1f} |
| held-out, {long_windows} windows of {long_window} tokens (long factors) | {long_loss:.3f} | {long_ppl:.1f} |
| uniform over the {vocab_size} logits | {uniform_loss:.3f} | {vocab_size} |

Measured with transformers on the exported BF16 weights over all of `texts/heldout.txt`.

## Sample answers (transformers, greedy, Phi-3.5 chat template)

{answers}

## Limitations

- A toy for exercising conversion, quantization, evaluation and serving: it writes English in the style
  of the Python docs, but what it says is frequently wrong or repetitive.
- transformers 5 loads `tokenizer.json` as a `LlamaTokenizer` with its own Metaspace pre-tokenizer, which
  adds no "▁" after special tokens; SentencePiece, the `tokenizers` library and llama.cpp do.  Both ways of
  tokenizing chat turns were used in training (three quarters the llama.cpp way).
- llama.cpp strips the newline after `<|user|>`, `<|assistant|>`, `<|end|>` ... (the `rstrip` flag) only
  for models whose GGUF `general.name` contains "phi3" or "phi-3" (llama-vocab.cpp); the name
  `{name}` {name_matches}.

## License

Model: MIT, like phiquant.  Training text: PSF-2.0 (`{license_file}`).
"""  # noqa: E501 (Markdown table rows)


def write(directory: Path, summary: TrainingSummary) -> None:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    eos_ids = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    fields = _card_fields(summary, config["rope_scaling"], eos_ids)
    (directory / "README.md").write_text(CARD.format(**fields), encoding="utf-8")
    (directory / "training_summary.json").write_text(
        json.dumps(_summary_json(summary), indent=2) + "\n", encoding="utf-8"
    )


def _summary_json(summary: TrainingSummary) -> dict:
    """The measured numbers, for benchmarks that compare models without parsing the card."""
    evaluation = summary.evaluation
    return {
        "name": summary.name,
        "parameters": summary.parameters,
        "weight_bytes": summary.weight_bytes,
        "vocab_size": summary.vocab_size,
        "shape": asdict(summary.shape),
        "corpus": {
            "debian_package": summary.source.package,
            "version": summary.source.version,
            "deb_sha256": summary.source.deb_sha256,
        },
        "plan": asdict(summary.plan),
        "result": asdict(summary.result),
        "heldout": {
            f"window_{measure.window}": {
                "windows": measure.windows,
                "loss": round(measure.loss, 4),
                "perplexity": round(measure.perplexity, 2),
            }
            for measure in (evaluation.short_context, evaluation.long_context)
        },
        "run": summary.run,
        "command": summary.command,
    }


def _card_fields(summary: TrainingSummary, rope_scaling: dict, eos_ids: list[int]) -> dict:
    shape, plan, result, evaluation = summary.shape, summary.plan, summary.result, summary.evaluation
    short_factor, long_factor = rope_scaling["short_factor"], rope_scaling["long_factor"]
    train_characters = sum(len(document.text) for document in summary.split.train)
    return {
        "name": summary.name,
        "name_matches": _name_note(summary.name),
        "hidden": shape.hidden_size,
        "intermediate": shape.intermediate_size,
        "layers": shape.layers,
        "heads": shape.heads,
        "head_dim": HEAD_DIM,
        "original": shape.original_context,
        "max_context": shape.max_context,
        "factor_count": len(short_factor),
        "short_range": f"{short_factor[0]}...{short_factor[-1]}",
        "long_range": f"{long_factor[0]}...{long_factor[-1]}",
        "sliding_window": SLIDING_WINDOW,
        "tokenizer_tokens": summary.tokenizer_tokens,
        "pieces": summary.tokenizer_tokens - 11,
        "vocab_size": summary.vocab_size,
        "parameters": summary.parameters,
        "embedding_parameters": summary.vocab_size * shape.hidden_size,
        "weight_mb": summary.weight_bytes / 1e6,
        "eos_ids": eos_ids,
        "package": summary.source.package,
        "version": summary.source.version,
        "deb_sha256": summary.source.deb_sha256 or "(not recorded: extracted directory)",
        "license_file": LICENSE_FILE,
        "train_documents": len(summary.split.train),
        "train_characters": train_characters,
        "heldout_documents": len(summary.split.heldout),
        "calibration_documents": len(summary.split.calibration),
        "conversation_percent": round(CONVERSATION_SHARE * 100),
        "command": summary.command,
        "seed": plan.seed,
        "steps": plan.steps,
        "tokens_per_step": plan.tokens_per_step,
        "tokens": result.tokens,
        "epochs": result.tokens / summary.epoch_tokens,
        "long_every": plan.long_sequence_every,
        "long_length": plan.long_sequence_length,
        "peak_lr": plan.peak_learning_rate,
        "warmup": plan.warmup_steps,
        "final_fraction": plan.final_learning_rate_fraction,
        "precision": "BF16 autocast, fp32 master weights" if plan.bf16_autocast else "float32 throughout",
        "wall_minutes": summary.run["wall_s"] / 60,
        "train_minutes": result.wall_seconds / 60,
        "threads": summary.run["threads"],
        "train_cpu_minutes": result.cpu_seconds / 60,
        "utilisation": result.cpu_seconds / (result.wall_seconds * summary.run["threads"]),
        "uncontended_minutes": result.cpu_seconds / summary.run["threads"] / 60,
        "load": ", ".join(str(value) for value in summary.run["load_average_now"]),
        "train_loss": result.final_train_loss,
        "train_ppl": math.exp(result.final_train_loss),
        "short_windows": evaluation.short_context.windows,
        "short_window": evaluation.short_context.window,
        "short_loss": evaluation.short_context.loss,
        "short_ppl": evaluation.short_context.perplexity,
        "long_windows": evaluation.long_context.windows,
        "long_window": evaluation.long_context.window,
        "long_loss": evaluation.long_context.loss,
        "long_ppl": evaluation.long_context.perplexity,
        "uniform_loss": math.log(summary.vocab_size),
        "answers": "\n\n".join(
            f"**{question}**\n\n{_quoted(answer)}" for question, answer in evaluation.answers.items()
        ),
    }


def _quoted(answer: str) -> str:
    lines = answer.strip().splitlines() or ["(nothing)"]
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def _name_note(name: str) -> str:
    if "phi3" in name.lower() or "phi-3" in name.lower():
        return "does, so keep it when converting"
    return 'does not: give the GGUF a name containing "phi3" when converting'
