"""The run's engine and the policy it serves: built once, handed each new policy, put to sleep
(or stopped) while the policy trains, closed at the end.

One :class:`Policy` per run (``sppd run``), per study (``sppd study``) and per Ray actor
(``engines.ray_pool``), so the rule for what happens to an engine when the policy changes
lives here only:

- a :class:`~sppd_lib.engines.ReloadingEngine` (vLLM) loads the new weights in place, or is
  closed and built again when it cannot take them exactly (a tied LM head whose embeddings
  changed: ``VLLMEngine.can_load_weights``);
- before training, a :class:`~sppd_lib.engines.SleepingEngine` that can sleep (vLLM on a GPU
  with ``engine.enable_sleep_mode``) sleeps and wakes on the next :meth:`Policy.engine` call
  before it loads the new weights; one that cannot is closed on a GPU (its KV reservation
  would starve the trainer) and kept on a CPU (RAM is plentiful and a start costs ~2 min);
- any other engine samples from weights loaded by this policy, once per model directory.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from sppd_lib.config import EngineConfig
from sppd_lib.engines import Engine, ReloadingEngine, SleepingEngine
from sppd_lib.engines.factory import build_engine, load_policy_weights

if TYPE_CHECKING:
    from sppd_lib.config import RunSections
    from sppd_lib.engines.ray_pool import EnginePool

__all__ = ["Policy"]

logger = logging.getLogger(__name__)


class Policy:
    """The current policy and the one engine (or pool of Ray actors) that samples from it.

    States: no engine; serving a policy (:attr:`path`); asleep (vLLM during training). With a
    ``pool`` the engines are Ray actors, each with a :class:`Policy` of its own.
    """

    def __init__(
        self, config: EngineConfig | None = None, seed: int = 0, pool: EnginePool | None = None
    ) -> None:
        self.config = config or EngineConfig()
        self.seed, self.pool = seed, pool
        self._load = load_policy_weights(self.config)
        #: The loaded weights of a weights-based engine (transformers), by model directory.
        self.weights_path: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self._engine: Engine | None = None
        self._engine_tokenizer: Any = None
        #: The policy the engine serves (``None``: no engine).
        self.path: str | None = None
        self.asleep = False
        #: Seconds spent starting engines and swapping weights in (for the phase timings).
        self.engine_seconds = 0.0

    @property
    def engine_kind(self) -> str:
        return self.config.kind

    @classmethod
    def for_run(cls, config: RunSections, model_path: str) -> Policy:
        """The policy of a run or study: on Ray actors when ``config.ray.address`` is set;
        the engine on ``engine.device``, else the run's ``device``."""
        engine = dataclasses.replace(config.engine, device=config.engine.device or config.device)
        pool = None
        if config.ray.address is not None:  # actors kept for the whole run
            from sppd_lib.engines.ray_pool import EnginePool

            pool = EnginePool(config.ray, engine, model_path, seed=config.sampler.seed)
        return cls(engine, config.sampler.seed, pool)

    def load(self, path: str) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of the policy at ``path``, loaded once per directory."""
        if self.weights_path != path:
            self.model = self.tokenizer = None  # free the old weights first
            self.model, self.tokenizer = self._load(path)
            self.weights_path = path
        return self.model, self.tokenizer

    def engine(self, path: str) -> tuple[Any, Any]:
        """``(engine, tokenizer)`` sampling from the policy at ``path``."""
        started = time.perf_counter()
        try:
            if self.pool is not None:
                self.pool.load(path)
                return self.pool.engine(), self.pool.tokenizer
            self._serve(path)
            return self._engine, self._engine_tokenizer
        finally:
            self.engine_seconds += time.perf_counter() - started

    def _serve(self, path: str) -> None:
        engine = self._engine
        if isinstance(engine, ReloadingEngine):
            if not engine.can_load_weights(path):
                logger.info("%s cannot be loaded in place: starting a new engine", path)
                self._close_engine()
            else:
                if self.asleep:
                    assert isinstance(engine, SleepingEngine)
                    engine.wake_up()
                    self.asleep = False
                engine.load_weights(path)  # a no-op for the policy it serves
                self.path = path
                return
        elif engine is not None and self.path == path:
            return
        self._engine = self._engine_tokenizer = None  # the old engine's buffers first
        self._engine, self._engine_tokenizer = build_engine(
            self.config, path, seed=self.seed, load_weights=self.load
        )
        self.path = path

    def make_room_for_training(self) -> None:
        """Free the device for training (see the module docstring): sleep, stop, or keep."""
        engine = self._engine
        if self.asleep or not isinstance(engine, ReloadingEngine):
            return
        if isinstance(engine, SleepingEngine) and engine.can_sleep:
            engine.sleep()
            self.asleep = True
        elif self._on_gpu():
            self._close_engine()

    def _on_gpu(self) -> bool:
        import torch

        device = self.config.device
        return device.startswith("cuda") if device else torch.cuda.is_available()

    def _close_engine(self) -> None:
        engine, self._engine, self._engine_tokenizer = self._engine, None, None
        self.path, self.asleep = None, False
        if isinstance(engine, ReloadingEngine):
            engine.close()

    def close(self) -> None:
        """Stop the run's engine and Ray actors."""
        self._close_engine()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
