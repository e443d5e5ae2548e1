"""The flags `convert` and `quantize` share about how a checkpoint directory is read."""

from __future__ import annotations

import argparse


def add_checkpoint_reading_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="multimodal checkpoints (Phi-4-multimodal): convert the language model alone, without the "
        "vision/audio encoders and their LoRA adapters (the model's own text-only path)",
    )
    parser.add_argument(
        "--mmproj-type",
        default="f16",
        choices=("f16", "bf16", "q8_0", "f32"),
        help="vision checkpoints (Phi-4-reasoning-vision): the type of the projector file written beside the "
        "model, <name>-mmproj-<TYPE>.gguf (default f16; never the text types, as llama.cpp)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a checkpoint that has only PyTorch pickles (pytorch_model.bin) with torch's weights-only "
        "loader, which never runs code from the file (needs torch: pip install 'phiquant[pickle]')",
    )


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """llama.cpp's shard options (convert_hf_to_gguf.py, llama-gguf-split), for hosts with a file size
    limit such as the Hugging Face Hub's 50 GB."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--split-max-size",
        metavar="SIZE",
        help="write each file as shards <name>-00001-of-0000N.gguf of at most SIZE of tensor data "
        "(e.g. 48G, 500M; decimal units as llama.cpp's tools); llama.cpp loads the first shard",
    )
    group.add_argument(
        "--split-max-tensors", type=int, metavar="N", help="write each file as shards of at most N tensors"
    )
