"""A pool of engines on Ray actors: each actor owns one engine (vLLM, or the transformers
engine for CPU clusters and tests), the driver sends each task to the least-loaded actor,
an actor that dies is replaced and its unfinished tasks are run again.

The pool lives as long as a run: :meth:`EnginePool.load` points every actor at a new policy
(each actor's :class:`~sppd_lib.engines.serving.Policy` applies the reload rule). The pool
knows engines only through the factory and runs work it is handed (:meth:`EngineActor.call`):
it imports nothing above ``sppd_lib.engines``. Needs the ``ray`` extra; nothing else in
``sppd_lib`` imports this module (or ray) unless ``ray.address`` is set.

The model directory must be readable at the same path on every node (a shared filesystem,
as the run directory is when the trained policies are loaded by the actors).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sppd_lib.config import EngineConfig, RayConfig
from sppd_lib.engines import Call, Continuation, SamplingSettings

__all__ = [
    "EngineActor",
    "EnginePool",
    "PoolEngine",
    "Task",
]

logger = logging.getLogger(__name__)


class EngineActor:
    """What runs inside one Ray actor: one engine over the current policy, built and reloaded
    by a :class:`~sppd_lib.engines.serving.Policy` of the actor's own from the run's
    ``engine:`` section (so an actor's results are the plain run's)."""

    def __init__(self, config: EngineConfig, model: str, *, seed: int = 0) -> None:
        from sppd_lib.engines.serving import Policy

        self.serving = Policy(config, seed)
        self.path: str | None = None
        self.engine: Any = None
        self.tokenizer: Any = None
        self.load(model)

    def load(self, path: str) -> None:
        """Serve the policy at ``path`` (nothing to do when it is the current one)."""
        if path != self.path:
            self.engine, self.tokenizer = self.serving.engine(path)
            self.path = path

    def ping(self) -> str | None:
        return self.path

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        """One engine call, as :meth:`~sppd_lib.engines.Engine.sample`."""
        return self.engine.sample(prefixes, n, settings)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(engine, tokenizer, *args)`` on this actor's engine: how a caller runs
        a whole unit of work next to the engine (the tree sampler runs a batch of trees:
        ``sppd_lib.ray_sampling``). ``function`` must be importable on the workers."""
        return function(self.engine, self.tokenizer, *args)


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
        engine: EngineConfig,
        model: str,
        *,
        seed: int = 0,
    ) -> None:
        """Connect to (or start) the cluster of ``config.address`` unless Ray is already
        initialised in this process, and start the actors on ``model`` (a resolved path),
        each with the engine of ``engine``."""
        import ray

        self.config, self.engine_config, self.seed = config, engine, seed
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
        return self._actor_class.remote(self.engine_config, self.path, seed=self.seed)

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
