"""A pool of engines on Ray actors: each actor owns one engine (vLLM, or the transformers
engine for CPU clusters and tests), the driver sends each task to the least-loaded actor,
an actor that dies is replaced and its unfinished tasks are run again.

The pool lives as long as a run: :meth:`EnginePool.load` points every actor at a new policy
(vLLM reloads the weights in place and drops its prefix cache; the transformers engine loads
the model again). Needs the ``ray`` extra; nothing else in ``sppd_lib`` imports this module
(or ray) unless ``ray.address`` is set.

The model directory must be readable at the same path on every node (a shared filesystem,
as the run directory is when the trained policies are loaded by the actors).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sppd_lib.config import RayConfig, VLLMConfig
from sppd_lib.engines import Call, Continuation, SamplingSettings

__all__ = [
    "EngineActor",
    "EnginePool",
    "PoolEngine",
    "Task",
]

logger = logging.getLogger(__name__)


class EngineActor:
    """What runs inside one Ray actor: one engine over the current policy.

    ``kind`` is ``"vllm"`` or ``"transformers"`` (the engines of the plain run, so an
    actor's results are the plain run's).
    """

    def __init__(
        self,
        kind: str,
        model: str,
        *,
        seed: int = 0,
        device: str | None = None,
        tensor_parallel_size: int = 1,
        max_batch_rows: int = 64,
        block_size: int | None = None,
    ) -> None:
        self.kind, self.seed, self.device = kind, seed, device
        self.tensor_parallel_size, self.max_batch_rows = tensor_parallel_size, max_batch_rows
        self.block_size = block_size
        self.path: str | None = None
        self.engine: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.load(model)

    def load(self, path: str) -> None:
        """Serve the policy at ``path`` (nothing to do when it is the current one)."""
        if path == self.path:
            return
        if self.kind == "vllm":
            from sppd_lib.engines.vllm_engine import VLLMEngine

            if self.engine is not None and not self.engine.can_load_weights(path):
                self.engine.close()  # a tied LM head with new embeddings: a new engine
                self.engine = None
            if self.engine is None:
                self.engine = VLLMEngine(
                    path,
                    tensor_parallel_size=self.tensor_parallel_size,
                    seed=self.seed,
                    block_size=self.block_size,
                )
            else:  # in place, and the old KV forgotten
                self.engine.load_weights(path)
            self.tokenizer = self.engine.tokenizer
        else:
            from sppd_lib.engines.transformers_engine import TransformersEngine
            from sppd_lib.models import load_model

            self.engine = self.model = None  # free the old weights first
            self.model, self.tokenizer = load_model(path, device=self.device)
            self.engine = TransformersEngine(
                self.model, self.tokenizer, max_batch_rows=self.max_batch_rows
            )
        self.path = path

    def ping(self) -> str | None:
        return self.path

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        """One engine call, as :meth:`~sppd_lib.engines.Engine.sample`."""
        return self.engine.sample(prefixes, n, settings)

    def sample_batch(
        self, problems: list[Any], batch_index: int, config: dict[str, Any], meta: dict | None
    ) -> list[str]:
        """The trees of the plain sampler's batch ``batch_index`` (its ``problems``), as the
        JSON lines of a trees file: :func:`~sppd_lib.sampler.sample_trees` itself runs, on
        a list where this batch stands at its place, the batches before it skipped."""
        import json

        from sppd_lib.config import SamplerConfig
        from sppd_lib.sampler import sample_trees

        sampler = SamplerConfig(**config)
        first = batch_index * sampler.problems_per_batch
        # The skipped batches are never read: placeholders keep this batch's index and seeds.
        placed = [None] * first + list(problems)
        trees = sample_trees(
            self.engine,
            self.tokenizer,
            placed,  # type: ignore[arg-type]
            sampler,
            progress=False,
            meta=meta,
            skip_batches=range(batch_index),
        )
        return [json.dumps(tree.to_dict(), ensure_ascii=False) for tree in trees]


@dataclass(frozen=True)
class Task:
    """One actor method call: ``method`` of :class:`EngineActor` with ``args``."""

    method: str
    args: tuple[Any, ...]


class EnginePool:
    """``config.engines`` :class:`EngineActor` s on a Ray cluster, kept across iterations."""

    def __init__(
        self,
        config: RayConfig,
        kind: str,
        model: str,
        *,
        seed: int = 0,
        device: str | None = None,
        max_batch_rows: int = 64,
        vllm: VLLMConfig | None = None,
    ) -> None:
        """Connect to (or start) the cluster of ``config.address`` unless Ray is already
        initialised in this process, and start the actors on ``model`` (a resolved path);
        vLLM actors take the options of ``vllm`` (default ``VLLMConfig()``)."""
        import ray

        self.config, self.kind = config, kind
        self._started_ray = False
        if not ray.is_initialized():
            address = None if config.address == "local" else config.address
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
            self._started_ray = True
        env = dict(config.env_vars)
        if os.environ.get("PYTHONPATH") and "PYTHONPATH" not in env:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._actor_class = ray.remote(EngineActor).options(
            num_cpus=config.cpus_per_engine,
            num_gpus=config.gpus_per_engine,
            max_restarts=0,  # the pool replaces a dead actor itself, on the current policy
            runtime_env={"env_vars": env} if env else None,
        )
        self._options = {
            "seed": seed,
            "device": device,
            "tensor_parallel_size": max(config.gpus_per_engine, 1),
            "max_batch_rows": max_batch_rows,
            "block_size": (vllm or VLLMConfig()).block_size,
        }
        self.path = model
        self.actors = [self._new_actor() for _ in range(config.engines)]
        ray.get([actor.ping.remote() for actor in self.actors])  # fail here, not mid-phase
        self.generations = [0] * len(self.actors)
        #: Actors replaced so far (over the pool's life) and tasks finished per actor slot.
        self.replaced = 0
        self.tasks_done = [0] * len(self.actors)
        self._tokenizer: Any = None
        self._tokenizer_path: str | None = None

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self.kind, self.path, **self._options)

    @property
    def tokenizer(self) -> Any:
        """The policy's tokenizer, loaded on the driver (prompts, decoding)."""
        if self._tokenizer_path != self.path:
            from sppd_lib.models import load_tokenizer

            self._tokenizer, self._tokenizer_path = load_tokenizer(self.path), self.path
        return self._tokenizer

    def load(self, path: str) -> None:
        """Point every actor at the policy at ``path`` (actors stay alive)."""
        if path == self.path:
            return
        logger.info("ray: %d actors load %s", len(self.actors), path)
        self.path = path
        for _ in self.run([Task("load", (path,))] * len(self.actors), spread=True):
            pass

    def run(self, tasks: Sequence[Task], *, spread: bool = False) -> Iterator[tuple[int, Any]]:
        """``(task index, result)`` of every task, in the order they finish.

        Each task goes to the actor with the fewest unfinished tasks (at most
        ``tasks_per_engine`` each; ``spread``: task ``i`` to actor ``i``, e.g. one ``load``
        per actor). When an actor dies its unfinished tasks are run again on a new actor
        that serves the current policy; more than ``max_restarts`` deaths in one ``run``
        raise the last error. An exception inside a task is raised as it is.
        """
        import ray
        from ray.exceptions import RayActorError

        pending = deque(range(len(tasks)))
        in_flight: dict[Any, tuple[int, int, int]] = {}  # ref -> (task, slot, generation)
        load = [0] * len(self.actors)
        deaths = 0
        while pending or in_flight:
            while pending:
                if spread:
                    free = [s for s in range(len(self.actors)) if load[s] == 0]
                    slot = next((s for s in free if s == pending[0] % len(self.actors)), None)
                    if slot is None:
                        break
                else:
                    slot = min(range(len(self.actors)), key=lambda s: load[s])
                    if load[slot] >= self.config.tasks_per_engine:
                        break
                index = pending.popleft()
                task = tasks[index]
                ref = getattr(self.actors[slot], task.method).remote(*task.args)
                in_flight[ref] = (index, slot, self.generations[slot])
                load[slot] += 1
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            index, slot, generation = in_flight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                pending.appendleft(index)  # run again, on the replacement
                if generation == self.generations[slot]:  # the first failure of this actor
                    deaths += 1
                    if deaths > self.config.max_restarts:
                        raise
                    logger.warning("ray: actor %d died (%s); replacing it", slot, exc)
                    self.actors[slot] = self._new_actor()
                    self.generations[slot] += 1
                    self.replaced += 1
                continue
            self.tasks_done[slot] += 1
            yield index, result

    def shutdown(self) -> None:
        """Stop the actors (and the cluster, when this pool started it)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def engine(self) -> PoolEngine:
        """The step engine of the pool (sampling, sampled evaluation, rollouts)."""
        return PoolEngine(self)


class PoolEngine:
    """The engine protocol over a pool: a call runs whole on one actor (so its result is
    what that engine gives for it), several calls run at once (``sample_calls``)."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool

    @property
    def tokenizer(self) -> Any:
        return self.pool.tokenizer

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        return next(self.sample_calls([(prefixes, n, settings)]))

    def sample_calls(self, calls: Sequence[Call]) -> Iterator[list[list[Continuation]]]:
        tasks = [Task("sample", (list(map(list, p)), n, s)) for p, n, s in calls]
        yield from _in_order(self.pool.run(tasks), len(tasks))


def _in_order(results: Iterator[tuple[int, Any]], count: int) -> Iterator[Any]:
    """The results of :meth:`EnginePool.run` by task index."""
    done: dict[int, Any] = {}
    for index, result in results:
        done[index] = result
    for index in range(count):
        yield done[index]
