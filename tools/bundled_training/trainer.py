"""The training loop: AdamW with warmup and cosine decay, BF16 autocast on CPU (or float32 throughout, for
CPUs without BF16 matrix instructions), periodic evaluation and checkpoints.

Every fourth step trains on sequences four times the original context.  transformers (like llama.cpp
once its context exceeds original_max_position_embeddings) then rotates with LongRoPE's *long* factors,
so the model also works when a runtime opens a context longer than 512 tokens, which llama.cpp does
for the whole sequence, short prompts included.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Phi3ForCausalLM

from .token_stream import TrainingStream


@dataclass(frozen=True)
class TrainingPlan:
    steps: int
    seed: int
    data_fingerprint: (
        str  # of the training documents and tokenizer: a checkpoint only resumes on the same data
    )
    tokens_per_step: int = 4096
    sequence_length: int = 512  # the model's original context
    long_sequence_every: int = 4  # every n-th step uses long sequences (LongRoPE long factors)
    long_sequence_length: int = 2048
    peak_learning_rate: float = 2e-3
    final_learning_rate_fraction: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    gradient_clip: float = 1.0
    evaluate_every: int = 250
    checkpoint_every: int = 250
    # BF16 autocast is fast where the CPU multiplies BF16 natively (AVX512-BF16, AMX); on an AVX2-only
    # EPYC a BF16 matmul ran at 0.9 GFLOPS against 110 in float32, so such machines train in float32.
    bf16_autocast: bool = True

    def sequence_length_at(self, step: int) -> int:
        return (
            self.long_sequence_length
            if step % self.long_sequence_every == self.long_sequence_every - 1
            else self.sequence_length
        )

    def learning_rate_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        floor = self.final_learning_rate_fraction
        return self.peak_learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Progress:
    """What a checkpoint carries besides the weights: where training is and what it has cost so far."""

    step: int = 0
    wall_seconds: float = 0.0  # training time, summed over interrupted and resumed runs
    cpu_seconds: float = 0.0  # CPU time of the training process over the same time
    recent_losses: list[float] = field(default_factory=list)

    @property
    def train_loss(self) -> float:
        return float(np.mean(self.recent_losses)) if self.recent_losses else float("nan")


@dataclass
class TrainingResult:
    steps: int
    tokens: int
    wall_seconds: float
    cpu_seconds: float  # below wall_seconds x threads when other processes shared the cores
    final_train_loss: float  # mean of the last 50 steps
    final_heldout_loss: float  # on the periodic-evaluation windows


def make_optimizer(model: torch.nn.Module, plan: TrainingPlan) -> torch.optim.AdamW:
    # No weight decay on norms (1-D) or on the embedding table, as in GPT-style training recipes.
    decayed = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    others = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    groups = [{"params": decayed, "weight_decay": plan.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=plan.peak_learning_rate, betas=(0.9, 0.95), eps=1e-8)


def batch_at(stream: TrainingStream, plan: TrainingPlan, step: int) -> torch.Tensor:
    length = plan.sequence_length_at(step)
    tokens = stream.tokens(step * plan.tokens_per_step, plan.tokens_per_step)
    return torch.from_numpy(tokens.astype(np.int64)).view(plan.tokens_per_step // length, length)


def precision(plan: TrainingPlan) -> torch.autocast:
    """The autocast context of training and evaluation: BF16, or disabled (float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16_autocast)


def heldout_loss(model: Phi3ForCausalLM, windows: torch.Tensor, plan: TrainingPlan) -> float:
    """Mean next-token loss over held-out windows (one forward pass per window, at training's precision)."""
    model.eval()
    losses = []
    with torch.no_grad(), precision(plan):
        for window in windows:
            losses.append(model(input_ids=window[None], labels=window[None]).loss.float().item())
    model.train()
    return float(np.mean(losses))


def train(
    model: Phi3ForCausalLM,
    stream: TrainingStream,
    plan: TrainingPlan,
    heldout_windows: torch.Tensor,
    checkpoint_path: Path,
    log: Callable[[dict], None],
) -> TrainingResult:
    optimizer = make_optimizer(model, plan)
    progress = _resume(model, optimizer, checkpoint_path, plan, log)
    model.train()
    wall_started, cpu_started = time.monotonic(), process_cpu_seconds()
    wall_before, cpu_before = progress.wall_seconds, progress.cpu_seconds
    heldout = float("nan")
    while progress.step < plan.steps:
        loss = _train_step(model, optimizer, batch_at(stream, plan, progress.step), plan, progress.step)
        progress.step += 1
        progress.recent_losses = (progress.recent_losses + [loss])[-50:]
        progress.wall_seconds = wall_before + time.monotonic() - wall_started
        progress.cpu_seconds = cpu_before + process_cpu_seconds() - cpu_started
        record = {
            "step": progress.step,
            "train_loss": round(progress.train_loss, 4),
            "elapsed_s": round(progress.wall_seconds, 1),
        }
        if progress.step % plan.evaluate_every == 0 or progress.step == plan.steps:
            heldout = heldout_loss(model, heldout_windows, plan)
            log(
                record
                | {
                    "heldout_loss": round(heldout, 4),
                    "learning_rate": plan.learning_rate_at(progress.step - 1),
                    "tokens_per_s": round(progress.step * plan.tokens_per_step / progress.wall_seconds),
                    "cpu_share": round(
                        progress.cpu_seconds / progress.wall_seconds / torch.get_num_threads(), 2
                    ),
                }
            )
        elif progress.step % 25 == 0:
            log(record)
        if progress.step % plan.checkpoint_every == 0 or progress.step == plan.steps:
            _save_checkpoint(checkpoint_path, model, optimizer, plan, progress)
    return TrainingResult(
        steps=plan.steps,
        tokens=plan.steps * plan.tokens_per_step,
        wall_seconds=progress.wall_seconds,
        cpu_seconds=progress.cpu_seconds,
        final_train_loss=progress.train_loss,
        final_heldout_loss=heldout if not math.isnan(heldout) else heldout_loss(model, heldout_windows, plan),
    )


def _train_step(
    model: Phi3ForCausalLM,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    plan: TrainingPlan,
    step: int,
) -> float:
    for group in optimizer.param_groups:
        group["lr"] = plan.learning_rate_at(step)
    with precision(plan):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), plan.gradient_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _save_checkpoint(path: Path, model, optimizer, plan: TrainingPlan, progress: Progress) -> None:
    temporary = path.with_suffix(".tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plan": asdict(plan),
        "progress": asdict(progress),
    }
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def _resume(model, optimizer, path: Path, plan: TrainingPlan, log) -> Progress:
    if not path.exists():
        return Progress()
    state = torch.load(path, weights_only=True)
    if state["plan"] != asdict(plan):
        raise ValueError(
            f"{path} was written by a different training plan; delete it or use another --work-dir"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress(**state["progress"])
    log({"resumed_from_step": progress.step, "elapsed_s": round(progress.wall_seconds, 1)})
    return progress


def save_log_line(path: Path) -> Callable[[dict], None]:
    """A log sink that prints each record and appends it to a JSON-lines file."""

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)
        with path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    return log
