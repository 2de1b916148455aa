"""Tree sampling on a pool of Ray engine actors (:mod:`sppd_lib.engines.ray_pool`), resumable
like :func:`sppd_lib.sampler.sample_to_file` and with the same trees.

The unit of work is one batch of the plain sampler: ``sampler.problems_per_batch`` whole
trees, sampled by :func:`~sppd_lib.sampler.sample_trees` itself inside an actor, with the
batch's own index, so its engine seeds and ``meta`` are the plain sampler's. All expansions
of a tree go to the same engine (its prefix cache pays), and the driver streams batches to
the least-loaded actor.

Guarantee: the trees file equals the plain sampler's for the same problems, sampler config,
meta and model (byte for byte where the engines compute alike: the same engine kind, device
and thread count), whatever the number of actors, the order in which they finish, or actors
that die. A tree depends on its batch (its problems share engine calls), never on the
cluster; with ``problems_per_batch: 1`` a tree is a function of (seed, its index, its
problem) alone. Finished batches are appended to ``<out>.partial.jsonl`` as they arrive, so
a killed driver loses only unfinished batches and a rerun (plain or on Ray) samples only the
rest; a killed actor loses only its unfinished batches, which are sampled again elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sppd_lib.config import SamplerConfig
from sppd_lib.data import Problem
from sppd_lib.engines import Engine
from sppd_lib.engines.ray_pool import EnginePool, Task
from sppd_lib.sampler import merge_tree_files, prepare_trees_file, sample_trees

__all__ = ["sample_batch", "sample_to_file_on_pool"]

logger = logging.getLogger(__name__)


def sample_to_file_on_pool(
    pool: EnginePool,
    problems: Sequence[Problem],
    config: SamplerConfig,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    meta: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """:func:`sppd_lib.sampler.sample_to_file` with the batches sampled on ``pool``'s actors
    (their current policy; see the module docstring for what equals what).

    ``on_batch(batch_index)`` is called after each batch is stored in the partial file.

    Raises:
        ConfigError: ``out`` or its partial file was sampled with other settings.
    """
    out = Path(out)
    prepared = prepare_trees_file(out, problems, config, meta)
    if prepared is None:
        return out
    partial, done = prepared
    size = config.problems_per_batch
    todo = [b for b in range(-(-len(problems) // size)) if b not in done]
    settings = asdict(config)
    tasks = [
        Task("call", (sample_batch, list(problems[b * size : (b + 1) * size]), b, settings, meta))
        for b in todo
    ]
    bar = tqdm(total=len(tasks), desc="tree batches", unit="batch", disable=not progress)
    with partial.open("a", encoding="utf-8") as handle:
        for index, trees in pool.run(tasks):
            handle.write("".join(line + "\n" for line in trees))
            handle.flush()
            bar.update(1)
            if on_batch is not None:
                on_batch(todo[index])
    bar.close()
    merge_tree_files([partial], out, partial_ok=True)  # in problem order
    partial.unlink()
    return out


def sample_batch(
    engine: Engine,
    tokenizer: Any,
    problems: list[Problem],
    batch_index: int,
    config: dict[str, Any],
    meta: dict | None,
) -> list[str]:
    """Inside an actor (:meth:`~sppd_lib.engines.ray_pool.EngineActor.call`): the trees of the
    plain sampler's batch ``batch_index`` (its ``problems``), as the JSON lines of a trees
    file: :func:`~sppd_lib.sampler.sample_trees` itself runs, on a list where this batch
    stands at its place, the batches before it skipped."""
    sampler = SamplerConfig(**config)
    first = batch_index * sampler.problems_per_batch
    # The skipped batches are never read: placeholders keep this batch's index and seeds.
    placed = [None] * first + list(problems)
    trees = sample_trees(
        engine,
        tokenizer,
        placed,  # type: ignore[arg-type]
        sampler,
        progress=False,
        meta=meta,
        skip_batches=range(batch_index),
    )
    return [json.dumps(tree.to_dict(), ensure_ascii=False) for tree in trees]
