"""Which model a folder of GGUF files is, for its card: the Hub id it links to, how the files relate to
it, and the license, from what the files record about their source (archs.source_metadata)."""

from __future__ import annotations

from typing import Any

from phiquant.errors import PhiquantError

# Every Phi model Microsoft published is MIT licensed (each model's LICENSE file on the Hub).
MICROSOFT_PHI_LICENSE = "mit"


def base_model_of(gguf: Any, warnings: list[str]) -> tuple[str, str]:
    """The Hub id the card links to and how the files relate to it.

    The repository the files were converted from (general.source.huggingface.repository, written when
    the source was a Hugging Face id) is what they are a quantization of.  Without it, a source whose
    model card named its base model (general.base_model.0.repo_url, as llama.cpp's converter writes
    it) was a fine-tune of that model.  Only when the files carry neither is the id inferred."""
    repository = gguf.get("general.source.huggingface.repository")
    if isinstance(repository, str) and _is_hub_id(repository):
        return repository, "quantized"
    base = _hub_id_of_url(gguf.get("general.base_model.0.repo_url"))
    if base is not None:
        warnings.append(
            f"the files were converted from a local fine-tune of {base}: the card links to {base} as "
            "base_model (relation: finetune); pass --base-model with the fine-tune's own id if it is published"
        )
        return base, "finetune"
    model_name = gguf.get("general.name")
    if not isinstance(model_name, str) or not model_name:
        raise PhiquantError("the files carry no model name: pass --base-model ORG/NAME", path=gguf.path)
    guess = f"microsoft/{model_name.replace(' ', '-')}"
    warnings.append(f"base_model {guess} is inferred from general.name; pass --base-model if it is not")
    return guess, "quantized"


def _is_hub_id(text: str) -> bool:
    organization, _, name = text.partition("/")
    return bool(organization and name and "/" not in name and " " not in text)


def _hub_id_of_url(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    for prefix in ("https://huggingface.co/", "http://huggingface.co/"):
        if url.startswith(prefix) and _is_hub_id(url[len(prefix) :].rstrip("/")):
            return url[len(prefix) :].rstrip("/")
    return None


def license_of(gguf: Any, base_model: str, warnings: list[str]) -> str:
    recorded = gguf.get("general.license")
    if isinstance(recorded, str) and recorded:
        return recorded.lower()
    organization, _, name = base_model.partition("/")
    if organization == "microsoft" and name.lower().startswith("phi"):
        return MICROSOFT_PHI_LICENSE
    warnings.append("no license recorded in the files: the card says 'other'; pass --license")
    return "other"
