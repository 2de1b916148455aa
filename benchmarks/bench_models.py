"""Model loading: the GGUF file through transformers (baseline) vs our converted safetensors cache.

Prints one JSON line as its last line.
"""

from __future__ import annotations

import json
import time

import torch
from transformers import AutoModelForCausalLM

from sppd_lib.models import load_model, resolve_model, smollm2_gguf_path


def main() -> None:
    resolve_model("smollm2-135m-instruct")  # make sure the cache exists (converts on first run)
    gguf = smollm2_gguf_path()
    started = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    gguf_seconds = time.perf_counter() - started

    started = time.perf_counter()
    load_model("smollm2-135m-instruct", device="cpu")
    cached_seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "benchmark": "model_load",
                "gguf_load_s": round(gguf_seconds, 2),
                "cached_load_s": round(cached_seconds, 2),
                "speedup": round(gguf_seconds / cached_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
