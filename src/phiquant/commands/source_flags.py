"""The flags `convert` and `quantize` share about how a checkpoint directory is read and how files are
split: the request fields' own flags (workflows.quantize_request)."""

from __future__ import annotations

import argparse

from phiquant.commands.flags import add_flags
from phiquant.workflows.quantize_request import RunOptions, SourceOptions


def add_checkpoint_reading_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, [SourceOptions], only=("text_only", "mmproj_type", "allow_pickle"))


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """llama.cpp's shard options (convert_hf_to_gguf.py, llama-gguf-split), for hosts with a file size
    limit such as the Hugging Face Hub's 50 GB."""
    add_flags(parser, [RunOptions], only=("split_max_size", "split_max_tensors"))
