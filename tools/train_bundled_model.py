"""Train phiquant's bundled default model: a tiny Phi-3.5-architecture model that has learned English.

Run from the repository root (torch, transformers, sentencepiece, tokenizers, safetensors from the
`[test]` extra):

    python tools/train_bundled_model.py --out src/phiquant/bundled/phiquant-tiny-phi35-pydocs \\
        --texts-dir src/phiquant/bundled/texts --seed 0

What it does, all on CPU:
1. Downloads the pinned Debian package python3.11-doc (12.6 MB, `apt-get download`, sha256-checked),
   or uses --corpus-deb / --corpus-dir; unpacks the documentation sources (no dpkg needed).
2. Renders the reStructuredText to plain text and splits whole documents into training, held-out
   evaluation and calibration sets (fixed, seed-independent split); writes heldout.txt and
   calibration.txt with their provenance when --texts-dir is given.
3. Trains a SentencePiece BPE tokenizer (8000 pieces + Phi-3's 11 chat tokens) on the training split.
4. Trains a Phi3ForCausalLM with LongRoPE (hidden 256, 8 layers, ~11 M parameters) for a fixed number
   of steps: 2400 steps of 4096 tokens, about 45 minutes on 2 uncontended cores (AMD EPYC, 2025).
5. Exports BF16 safetensors, config and tokenizer files in Phi-3.5-mini's layout, measures held-out
   perplexity and a greedy chat answer with transformers, and writes the model card.

Everything intermediate (the .deb, extracted sources, checkpoints, the log) goes to --work-dir
(default build/bundled-training/<name>-seed<seed>); an interrupted run resumes from its last
checkpoint when started again with the same arguments.  --minutes N sizes the step count to a time
budget instead (measured on this machine, so not bit-reproducible elsewhere; the chosen count is
logged).  Training uses BF16 autocast, which is fast only where the CPU has BF16 matrix instructions
(AVX512-BF16, AMX); elsewhere --float32 is far faster (on a 2-core AVX2 EPYC, 2.4 s a step against
80 s) and gives other weights.  A second, smaller model for benchmarks, ~6 minutes with AMX and BF16,
~20 minutes on 2 AVX2 cores in float32:

    python tools/train_bundled_model.py --out build/phiquant-tiny-phi35-pydocs-seed1 --seed 1 \\
        --layers 4 --steps 500 --float32
"""

import os
import sys

# OpenMP threads that spin while they wait are ruinous on shared cores: with one other busy process on
# a 2-core machine a training step took 15-27 s spinning against 3-4.5 s waiting passively.  libgomp
# reads this when torch loads it, so it is set before anything imports torch; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bundled_training.pipeline import main  # noqa: E402 (after the OpenMP setting)

if __name__ == "__main__":
    sys.exit(main())
