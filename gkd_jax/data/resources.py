"""Where the files a run reads are: `builtin:NAME` names a file shipped inside the package
(gkd_jax/assets/NAME); a model source is a local directory or a Hugging Face hub id, found
through huggingface_hub's cache. Below models and data alike: both resolve sources here."""

from __future__ import annotations

import os

# gkd_jax/assets, beside the subpackages (this module is in gkd_jax/data/).
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
BUILTIN = "builtin:"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_path(path: str) -> str:
    if path.startswith(BUILTIN):
        return os.path.join(ASSETS, path[len(BUILTIN) :])
    return os.path.abspath(os.path.expanduser(path))


def looks_like_hub_id(name: str) -> bool:
    """ "org/name", not a path: a relative, absolute or home path is never sent to the hub."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def resolve_model_dir(name_or_path: str) -> str:
    """A local directory as is; otherwise a hub id ("Qwen/Qwen2-0.5B-Instruct") through
    huggingface_hub's cache (downloading when online; HF_HUB_OFFLINE=1 uses the cache only)."""
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(path):
        return path
    if not looks_like_hub_id(name_or_path):
        raise FileNotFoundError(f"no model directory at {path}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, allow_patterns=HUB_FILES)
    except Exception as e:  # offline, unknown id, gated repo: say which and how to fix it
        raise FileNotFoundError(
            f"{name_or_path!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {e}). Pass a local directory, or log in / go "
            "online once so the hub cache holds it."
        ) from e


def is_hf_model_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json"))


def is_hf_source(checkpoint_spec: str) -> bool:
    """A Hugging Face directory (config.json) or a hub id, rather than our own checkpoint."""
    if not checkpoint_spec or checkpoint_spec.startswith(BUILTIN):
        return False
    path = os.path.abspath(os.path.expanduser(checkpoint_spec))
    if os.path.isdir(path):
        return is_hf_model_dir(path)
    return looks_like_hub_id(checkpoint_spec)
