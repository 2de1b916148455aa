from __future__ import annotations

import os

import pytest
import torch

from sppd_lib import models
from sppd_lib.models import (
    ModelError,
    attach_lora,
    build_tiny_model,
    load_model,
    resolve_model,
    smollm2_gguf_path,
)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models(arch: str) -> None:
    model, tokenizer = build_tiny_model(arch, seed=1)
    parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < parameters < 10_000_000
    assert model.config.vocab_size == len(tokenizer) == 49152
    again, _ = build_tiny_model(arch, seed=1)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # a seed gives the same weights
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 49152) and torch.isfinite(logits).all()


def test_tiny_alias_loads_like_a_directory() -> None:
    model, tokenizer = load_model("tiny-qwen2", device="cpu")
    assert model.config.model_type == "qwen2" and tokenizer.padding_side == "left"
    assert os.path.isdir(resolve_model("tiny-qwen2"))


def test_attach_lora_trains_only_the_adapter() -> None:
    model, _ = build_tiny_model("llama")
    peft_model = attach_lora(model, r=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_missing_model_paths(tmp_path, monkeypatch) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="model not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match=r"without config\.json"):
        resolve_model(tmp_path)
    # Offline by default: an uncached hub id fails at once, naming the ways a model is found.
    monkeypatch.delenv("SPPD_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError, match=r"not found locally.*--allow-download"):
        resolve_model("Qwen/Qwen2.5-7B")
    monkeypatch.setenv("SPPD_ALLOW_DOWNLOAD", "1")  # the opt-in: a hub id passes through
    assert resolve_model("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"


def test_cached_hub_id_resolves_offline(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    snapshot = tmp_path / "models--org--m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--m" / "refs").mkdir()
    (tmp_path / "models--org--m" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("SPPD_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model("org/m") == str(snapshot)


@pytest.mark.slow
def test_gguf_is_converted_once_then_reused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPPD_CACHE_DIR", str(tmp_path))
    first = resolve_model("smollm2-135m-instruct")
    with open(os.path.join(first, "config.json")) as config:
        assert "quantization_config" not in config.read()

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cache hit must not convert the GGUF file again")

    monkeypatch.setattr(models, "_save_atomically", no_conversion)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", no_conversion)
    assert resolve_model(smollm2_gguf_path()) == first  # the same file, named by path


@pytest.mark.slow
def test_real_model_loads_and_answers(smollm2) -> None:
    model, tokenizer = smollm2
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    from sppd_lib.prompts import build_prompt

    inputs = tokenizer(build_prompt(tokenizer, "What is 2 + 3?"), return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in text


def test_vllm_reloads_in_place_unless_a_tied_head_gets_new_embeddings(tmp_path) -> None:
    """vLLM 0.32's in-place reload keeps a tied LM head's old tensor: such a checkpoint
    with new embeddings must get a new engine (checked without vLLM: configs and tensors)."""
    import copy

    from sppd_lib.engines.vllm_engine import reloads_in_place
    from sppd_lib.models import resolve_model

    base = resolve_model("tiny-llama")
    model, _ = load_model(base, device="cpu")
    assert model.config.tie_word_embeddings

    def saved(name: str, change) -> str:
        changed = copy.deepcopy(model)
        with torch.no_grad():
            change(changed)
        changed.save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    new_mlp = saved("mlp", lambda m: m.model.layers[0].mlp.up_proj.weight.mul_(2))
    new_embeddings = saved("embed", lambda m: m.get_input_embeddings().weight.mul_(2))

    def untie(m) -> None:
        m.config.tie_word_embeddings = False
        m.lm_head.weight = torch.nn.Parameter(m.get_input_embeddings().weight * 2)

    untied = saved("untied", untie)
    assert reloads_in_place(base, base) and reloads_in_place(base, new_mlp)
    assert not reloads_in_place(base, new_embeddings)
    assert reloads_in_place(base, untied)
