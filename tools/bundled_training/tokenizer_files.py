"""A SentencePiece BPE tokenizer laid out exactly like Phi-3.5-mini's tokenizer files, only smaller.

Phi-3/3.5 use the Llama-2 SentencePiece model (ids 0..2 = <unk> <s> </s>, 3..258 = byte pieces, BPE with
byte fallback) plus 11 chat tokens *added after* the SentencePiece pieces, and an embedding matrix padded
to a multiple of 64 rows.  phiquant's converter must meet the same structure here as in the real model,
so the structure comes from /work/shared/reference/phi_model_files.md §0.1 and §1.3-1.4; only the number
of pieces differs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<s>", "<|endoftext|>"
END_OF_TURN_TOKEN = "<|end|>"

# Phi-3.5-mini-instruct's chat template, verbatim (phi_model_files.md §1.4).
PHI35_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class AddedToken:
    content: str
    special: bool
    rstrip: bool


# The three SentencePiece control pieces keep their ids; their flags are those of the current Phi-3 files
# (</s> is *not* special and strips whitespace to its right).
CONTROL_TOKENS = [
    AddedToken(UNK_TOKEN, True, False),
    AddedToken(BOS_TOKEN, True, False),
    AddedToken("</s>", False, True),
]
# Appended after the SentencePiece pieces, in Phi-3's order (ids 32000..32010 in the real model).
PHI3_CHAT_TOKENS = [
    AddedToken("<|endoftext|>", True, False),
    AddedToken("<|assistant|>", True, True),
    *[AddedToken(f"<|placeholder{number}|>", True, True) for number in range(1, 5)],
    AddedToken("<|system|>", True, True),
    AddedToken(END_OF_TURN_TOKEN, True, True),
    AddedToken("<|placeholder5|>", True, True),
    AddedToken("<|placeholder6|>", True, True),
    AddedToken("<|user|>", True, True),
]
# generation_config.json's eos_token_id list: <|end|>, <|assistant|>, <|endoftext|> (Phi-3.5's order).
END_OF_GENERATION_TOKENS = [END_OF_TURN_TOKEN, "<|assistant|>", "<|endoftext|>"]
EMBEDDING_ROW_MULTIPLE = 64


def train_sentencepiece(text_file: Path, model_prefix: Path, vocab_size: int, threads: int) -> Path:
    """Train a Llama-style BPE model on one paragraph or code line per line of `text_file`."""
    sentencepiece.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(model_prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        # Llama's settings: keep text as is (no NFKC, no whitespace collapsing, so code indentation
        # survives), split digits, fall back to bytes instead of <unk>.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        byte_fallback=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.99995,
        max_sentence_length=1 << 16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=threads,
        minloglevel=2,
    )
    model_file = model_prefix.with_suffix(".model")
    forget_training_paths(model_file)
    return model_file


def forget_training_paths(model_file: Path) -> None:
    """Keep only file names in the model's trainer_spec: absolute paths of the machine that trained it
    would leak into the shipped file and make it differ from one work directory to the next."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_file.read_bytes())
    model.trainer_spec.input[:] = [Path(path).name for path in model.trainer_spec.input]
    model.trainer_spec.model_prefix = Path(model.trainer_spec.model_prefix).name
    model_file.write_bytes(model.SerializeToString())


def added_token_ids(piece_count: int) -> dict[str, int]:
    return {token.content: piece_count + offset for offset, token in enumerate(PHI3_CHAT_TOKENS)}


def padded_vocab_size(piece_count: int) -> int:
    """config.vocab_size: all token ids, rounded up like Phi-3's 32011 -> 32064."""
    token_count = piece_count + len(PHI3_CHAT_TOKENS)
    return -(-token_count // EMBEDDING_ROW_MULTIPLE) * EMBEDDING_ROW_MULTIPLE


def write_tokenizer_files(sentencepiece_model: Path, directory: Path, model_max_length: int) -> None:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    pieces = [processor.id_to_piece(index) for index in range(processor.get_piece_size())]
    if pieces[:3] != [UNK_TOKEN, BOS_TOKEN, "</s>"] or pieces[3] != "<0x00>" or pieces[258] != "<0xFF>":
        raise ValueError("the SentencePiece model does not have Llama's <unk> <s> </s> <0x00>..<0xFF> layout")
    shutil.copyfile(sentencepiece_model, directory / "tokenizer.model")
    ids = added_token_ids(len(pieces))
    all_added = [(index, token) for index, token in enumerate(CONTROL_TOKENS)] + [
        (ids[token.content], token) for token in PHI3_CHAT_TOKENS
    ]
    _write_json(directory / "tokenizer.json", _tokenizer_json(pieces, all_added))
    _write_json(directory / "tokenizer_config.json", _tokenizer_config(all_added, model_max_length))
    _write_json(directory / "special_tokens_map.json", _special_tokens_map())
    _write_json(directory / "added_tokens.json", ids)


def bpe_merges(pieces: list[str]) -> list[str]:
    """Merges for a BPE model that reproduces SentencePiece's encoding.

    SentencePiece BPE merges, at each step, the adjacent pair whose concatenation is the best-scored piece
    (scores fall with the id).  A merge list ranked by the id of the merged piece makes the Hugging Face BPE
    pick the same pair; every split of a piece into two known pieces is listed, since either may occur.
    """
    rank = {piece: index for index, piece in enumerate(pieces)}
    merges = []
    for index, piece in enumerate(pieces):
        if index < 259 or len(piece) < 2:
            continue  # control and byte pieces never take part in merges
        splits = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))]
        known = [
            (left, right)
            for left, right in splits
            if left in rank and right in rank and rank[left] >= 259 and rank[right] >= 259
        ]
        merges += [(index, rank[left], rank[right], f"{left} {right}") for left, right in known]
    return [merge for *_, merge in sorted(merges)]


def _tokenizer_json(pieces: list[str], added: list[tuple[int, AddedToken]]) -> dict:
    # Key order and contents as in Phi-3-mini's tokenizer.json (phi_model_files.md §0.1).
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": index,
                "content": token.content,
                "single_word": False,
                "lstrip": False,
                "rstrip": token.rstrip,
                "normalized": False,
                "special": token.special,
            }
            for index, token in added
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": UNK_TOKEN,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "vocab": {piece: index for index, piece in enumerate(pieces)},
            "merges": bpe_merges(pieces),
        },
    }


def _tokenizer_config(added: list[tuple[int, AddedToken]], model_max_length: int) -> dict:
    # Phi-3-mini-4k's tokenizer_config.json key for key (§2.3) with Phi-3.5's template (§1.4).
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(index): {
                "content": token.content,
                "lstrip": False,
                "normalized": False,
                "rstrip": token.rstrip,
                "single_word": False,
                "special": token.special,
            }
            for index, token in added
        },
        "bos_token": BOS_TOKEN,
        "chat_template": PHI35_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": EOS_TOKEN,
        "padding_side": "left",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK_TOKEN,
        "use_default_system_prompt": False,
    }


def _special_tokens_map() -> dict:
    def entry(content: str) -> dict:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    return {
        "bos_token": entry(BOS_TOKEN),
        "eos_token": entry(EOS_TOKEN),
        "pad_token": entry(EOS_TOKEN),
        "unk_token": entry(UNK_TOKEN),
    }


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
