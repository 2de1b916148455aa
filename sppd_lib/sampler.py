"""SPPD tree-based self-sampling (arXiv 2502.13516) over any engine.

Per problem, ``k`` passes. A pass descends from the root, choosing a child with probability
proportional to exp(mean token log-prob of its step), until it reaches a node without
children; if that node is not terminal it is expanded with ``c`` sampled next steps.

A tree grows in rounds: it selects ``passes_per_round`` leaves, waits for their expansions,
adds the children in selection order, then selects again. With ``branch_surprisal`` set
(entropy-guided branching) an expansion samples one child, and its other ``c - 1`` only when
that child's step was uncertain. Two drivers:

* synchronous (any engine, the ``Engine.sample`` protocol): the rounds of a batch of
  problems go to the engine in one call, so every tree waits for the slowest expansion of
  the batch;
* streaming (engines with ``submit`` / ``collect``, i.e. vLLM): each tree starts its next
  round as soon as its own expansions are back, and a new problem opens as soon as one
  finishes, so the engine's continuous batch never drains. Each request is seeded from
  (sampler seed, problem id, node id) and a tree never looks at another tree, so a tree does
  not depend on batching, completion order or which batches were skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.config import ConfigError, SamplerConfig
from sppd_lib.data import DataError, Problem
from sppd_lib.engines import (
    Continuation,
    Engine,
    HasContextLength,
    SamplingSettings,
    StreamingEngine,
)
from sppd_lib.files import reporting_disk_full, write_text_atomic
from sppd_lib.grading import extract_answer
from sppd_lib.prompts import (
    build_prompt,
    context_length,
    has_final_answer,
    overlong_prompts,
    prompt_token_limit,
)
from sppd_lib.prompts import prompt_token_ids as build_prompt_ids
from sppd_lib.rundir import partial_trees_path
from sppd_lib.tree import StepNode, StepTree, mean_logprob, read_trees, write_trees
from sppd_lib.values import grade_leaves

__all__ = [
    "drop_overlong_problems",
    "merge_tree_files",
    "prepare_trees_file",
    "request_seed",
    "sample_to_file",
    "sample_trees",
    "shard",
]

logger = logging.getLogger(__name__)


def _select(
    tree: StepTree, rng: random.Random, config: SamplerConfig, taken: Container[int] = ()
) -> StepNode | None:
    """Descend from the root to a node without children (SPPD §3 selection).

    Leaves in ``taken`` (already picked for expansion this round) and, with ``skip_closed``,
    finished subtrees are not entered. ``None`` when the descent finds nothing to expand.
    """
    node = tree.root
    while True:
        children = tree.children(node.id)
        if not children:
            return None if node.id in taken else node
        if config.skip_closed:
            children = [c for c in children if not tree.is_closed(c.id)]
        children = [c for c in children if c.id not in taken or tree.children(c.id)]
        if not children:
            return None
        if config.selection == "uniform":
            node = rng.choice(children)
        else:  # ∝ exp(mean log-prob), shifted by the max for numerical safety
            top = max(child.mean_logprob for child in children)
            weights = [math.exp(child.mean_logprob - top) for child in children]
            node = rng.choices(children, weights=weights)[0]


def _mark_terminal(tree: StepTree, node: StepNode, config: SamplerConfig) -> None:
    path_tokens = sum(len(step.token_ids) for step in tree.path(node.id))
    if has_final_answer(node.text):
        node.terminal, node.terminal_reason = True, "answer"
    elif node.finish_reason == "eos":
        node.terminal = True
        has_answer = config.answer_format == "any" and extract_answer(tree.path_text(node.id))
        node.terminal_reason = "answer" if has_answer else "eos"
    elif node.depth >= config.max_depth:
        node.terminal, node.terminal_reason = True, "max_depth"
    elif path_tokens >= config.max_total_tokens:
        node.terminal, node.terminal_reason = True, "max_tokens"


def _batches(items: Sequence[Problem], size: int) -> Iterator[Sequence[Problem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _select_round(
    tree: StepTree, rng: random.Random, config: SamplerConfig, passes_done: int
) -> tuple[list[StepNode], int]:
    """The leaves one round of ``tree`` expands and the passes that round uses up.

    Up to ``passes_per_round`` distinct leaves (of the ``k - passes_done`` passes left); a
    pass that ends on a terminal leaf (only without ``skip_closed``) is used up unexpanded.
    """
    want = min(config.passes_per_round, config.k - passes_done)
    used = 0
    chosen: dict[int, StepNode] = {}  # insertion order = selection order
    for _ in range(2 * want):  # a few retries when a descent ends on a taken leaf
        if len(chosen) == want:
            break
        node = _select(tree, rng, config, chosen)
        if node is None:
            continue
        if node.terminal:  # only without skip_closed: the paper's wasted pass
            want -= 1
            used += 1
            continue
        chosen[node.id] = node
    return list(chosen.values()), used + len(chosen)


def _add_children(
    tree: StepTree, node: StepNode, continuations: Sequence[Continuation], config: SamplerConfig
) -> None:
    for continuation in continuations:
        child = tree.add_child(
            node.id,
            text=continuation.text,
            token_ids=list(continuation.token_ids),
            logprobs=list(continuation.logprobs),
            finish_reason=continuation.finish_reason,
        )
        _mark_terminal(tree, child, config)


def _new_tree(
    problem: Problem,
    index: int,
    tokenizer: PreTrainedTokenizerBase,
    config: SamplerConfig,
    meta: dict | None,
) -> StepTree:
    """The root-only tree of ``problems[index]``; its meta records its batch and index."""
    return StepTree(
        problem,
        build_prompt_ids(tokenizer, problem.question, config.system_prompt),
        prompt_text=build_prompt(tokenizer, problem.question, config.system_prompt),
        meta={
            "sampler": asdict(config),
            **(meta or {}),
            "batch": index // config.problems_per_batch,
            "problem_index": index,
        },
    )


def _tree_rng(config: SamplerConfig, problem: Problem) -> random.Random:
    # One generator per problem, seeded by its id: selection does not depend on batching.
    return random.Random(f"{config.seed}/{problem.id}")


def request_seed(seed: int, problem_id: str, node_id: int, part: int = 0) -> int:
    """The sampling seed of the expansion of node ``node_id`` of problem ``problem_id``
    (streaming path): a 62-bit hash, so it depends on nothing else (not on the round, the
    batch or the order requests finish in) and leaves room for vLLM's ``seed + child``.
    ``part`` 1 is the request for the siblings of an entropy-guided expansion."""
    key = f"{seed}/{problem_id}/{node_id}" + (f"/{part}" if part else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


#: Added to a synchronous round's seed for its entropy-guided siblings call: above every
#: round seed of any realistic sampler seed, and small enough for engines' 64-bit seeds.
_SIBLINGS_SEED_OFFSET = 2**40


def _step_settings(config: SamplerConfig, seed: int) -> SamplingSettings:
    """How one expansion samples its next steps."""
    return SamplingSettings(
        max_tokens=config.max_step_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop=config.step_delimiter,
        seed=seed,
    )


def _first_children(config: SamplerConfig) -> int:
    """Children an expansion samples first: all ``c``, or one under entropy-guided branching."""
    return config.c if config.branch_surprisal is None else 1


def _wants_siblings(first: Continuation, config: SamplerConfig) -> bool:
    """Entropy-guided branching: the first child's step was uncertain, so its node also gets
    the other ``c - 1`` children (mean token surprisal ≥ ``branch_surprisal``)."""
    if config.branch_surprisal is None or config.c == 1:
        return False
    return -mean_logprob(first.logprobs) >= config.branch_surprisal


def sample_trees(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    problems: Iterable[Problem],
    config: SamplerConfig,
    *,
    progress: bool = True,
    meta: dict | None = None,
    skip_batches: Container[int] = (),
    streaming: bool | None = None,
) -> Iterator[StepTree]:
    """Sample one step tree per problem; trees are yielded in problem order.

    Batch ``b`` is always ``problems[b * problems_per_batch :][:problems_per_batch]``;
    skipping finished batches (``skip_batches``, for resuming) gives the same trees for the
    others. Each tree's ``meta`` records its batch and index.

    ``streaming``: drive the engine's ``submit`` / ``collect`` (no barrier across trees; up to
    ``problems_per_batch`` trees grow at once) instead of one ``sample`` call per round of a
    batch. ``None`` (default): stream when the engine can. The two drivers seed differently,
    so they give different (equally valid) trees.
    """
    can_stream = isinstance(engine, StreamingEngine)
    if streaming is None:
        streaming = can_stream
    if streaming and not can_stream:
        raise ValueError(f"{type(engine).__name__} has no submit/collect: it cannot stream")
    problems = list(problems)
    if streaming:
        yield from _sample_streaming(
            engine, tokenizer, problems, config, progress, meta, skip_batches
        )
        return
    for batch_index, batch in enumerate(_batches(problems, config.problems_per_batch)):
        if batch_index in skip_batches:
            continue
        first_index = batch_index * config.problems_per_batch
        trees = [
            _new_tree(problem, first_index + offset, tokenizer, config, meta)
            for offset, problem in enumerate(batch)
        ]
        rngs = [_tree_rng(config, p) for p in batch]
        passes_done = [0] * len(trees)
        bar = tqdm(
            total=config.k * len(trees),
            desc=f"trees {batch_index + 1}",
            unit="pass",
            disable=not progress,
        )
        for round_index in itertools.count():
            jobs = []
            for tree_index, (tree, rng) in enumerate(zip(trees, rngs, strict=True)):
                nodes, used = _select_round(tree, rng, config, passes_done[tree_index])
                passes_done[tree_index] += used
                jobs.extend((tree, node) for node in nodes)
            if not jobs:
                break
            bar.update(len(jobs))
            settings = _step_settings(
                config, config.seed * 1_000_003 + batch_index * 1_009 + round_index
            )
            prefixes = [t.prefix_ids(n.id) for t, n in jobs]
            results = engine.sample(prefixes, _first_children(config), settings)
            widen = [
                i for i, children in enumerate(results) if _wants_siblings(children[0], config)
            ]
            if widen:  # one more call for the siblings of the uncertain steps
                siblings_settings = replace(settings, seed=settings.seed + _SIBLINGS_SEED_OFFSET)
                more = engine.sample([prefixes[i] for i in widen], config.c - 1, siblings_settings)
                for i, siblings in zip(widen, more, strict=True):
                    results[i] = [*results[i], *siblings]
            for (tree, node), continuations in zip(jobs, results, strict=True):
                _add_children(tree, node, continuations, config)
            bar.set_postfix(nodes=sum(len(t.nodes) - 1 for t in trees))
        bar.close()
        for tree in trees:
            grade_leaves(tree)
            yield tree


@dataclass
class _Growing:
    """A tree of the streaming driver and its round in flight."""

    tree: StepTree
    rng: random.Random
    passes_done: int = 0
    #: The leaves this round expands, in selection order, and the children back so far.
    round: list[StepNode] = field(default_factory=list)
    returned: dict[int, list[Continuation]] = field(default_factory=dict)
    #: Leaves whose siblings (entropy-guided branching) are still being sampled.
    widening: set[int] = field(default_factory=set)


def _sample_streaming(
    engine: Any,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: SamplerConfig,
    progress: bool,
    meta: dict | None,
    skip_batches: Container[int],
) -> Iterator[StepTree]:
    """The streaming driver (see the module docstring). ``engine`` has ``submit(request_id,
    prefix, n, settings)``, ``collect() -> [(request_id, continuations)]``, ``pending()``
    and ``abort()`` (``VLLMEngine``)."""
    order = [i for i in range(len(problems)) if i // config.problems_per_batch not in skip_batches]
    growing: dict[int, _Growing] = {}
    finished: dict[int, StepTree] = {}
    opened = head = 0
    bar = tqdm(total=config.k * len(order), desc="trees", unit="pass", disable=not progress)

    def start_round(index: int) -> None:
        state = growing[index]
        state.round, used = _select_round(state.tree, state.rng, config, state.passes_done)
        state.passes_done += used
        state.returned, state.widening = {}, set()
        bar.update(used)
        if not state.round:  # k passes done or nothing left to expand
            del growing[index]
            grade_leaves(state.tree)
            finished[index] = state.tree
            return
        for node in state.round:
            settings = _step_settings(
                config, request_seed(config.seed, state.tree.problem.id, node.id)
            )
            engine.submit(
                f"{index}/{node.id}",
                state.tree.prefix_ids(node.id),
                _first_children(config),
                settings,
            )

    try:
        while head < len(order):
            # Keep problems_per_batch trees growing: open the next problem when one finishes.
            while opened < len(order) and len(growing) < config.problems_per_batch:
                index = order[opened]
                problem = problems[index]
                growing[index] = _Growing(
                    _new_tree(problem, index, tokenizer, config, meta), _tree_rng(config, problem)
                )
                opened += 1
                start_round(index)
            while head < len(order) and order[head] in finished:  # yield in problem order
                yield finished.pop(order[head])
                head += 1
            if not growing:
                continue
            for request_id, continuations in engine.collect():
                index, node_id, *siblings = (int(part) for part in request_id.split("/"))
                state = growing[index]
                if siblings:
                    state.returned[node_id] = [*state.returned[node_id], *continuations]
                    state.widening.discard(node_id)
                else:
                    state.returned[node_id] = continuations
                    if _wants_siblings(continuations[0], config):
                        seed = request_seed(config.seed, state.tree.problem.id, node_id, part=1)
                        engine.submit(
                            f"{index}/{node_id}/1",
                            state.tree.prefix_ids(node_id),
                            config.c - 1,
                            _step_settings(config, seed),
                        )
                        state.widening.add(node_id)
                if len(state.returned) == len(state.round) and not state.widening:
                    # The whole round is back: children in selection order, so node ids (and
                    # with them the next seeds) do not depend on the order requests finished.
                    for node in state.round:
                        _add_children(state.tree, node, state.returned[node.id], config)
                    start_round(index)
    finally:
        if engine.pending():  # stopped early (an error, or the consumer closed us)
            engine.abort()
        bar.close()


# ---------------------------------------------------------------------------------------
# Files: resumable sampling, shards, merging
# ---------------------------------------------------------------------------------------


def _settings_of(
    tree: dict, problems: Sequence[Problem], config: SamplerConfig, meta: dict | None
) -> list[str]:
    """How the stored ``tree`` was made differently from what is asked now: ``key: old ->
    new`` for the sampler settings, the caller's meta (model, engine, shard, ...) and the
    problem it belongs to; empty when it is the same."""
    stored = tree.get("meta") or {}
    changes = []
    old_sampler = stored.get("sampler") or {}
    for key, value in asdict(config).items():
        if old_sampler.get(key) != value:
            changes.append(f"{key}: {old_sampler.get(key)!r} -> {value!r}")
    for key, value in (meta or {}).items():
        if stored.get(key) != value:
            changes.append(f"{key}: {stored.get(key)!r} -> {value!r}")
    index = stored.get("problem_index")
    problem_id = (tree.get("problem") or {}).get("id")
    if not isinstance(index, int) or index >= len(problems) or problems[index].id != problem_id:
        changes.append(f"problem {index}: {problem_id!r} is not in the problems asked for now")
    return changes


def _check_same_settings(
    path: Path,
    trees: Iterable[dict],
    problems: Sequence[Problem],
    config: SamplerConfig,
    meta: dict | None,
) -> None:
    """Refuse to resume or reuse ``path`` when it was sampled under other settings: mixing
    them would silently give trees of two different samplers in one file."""
    for tree in trees:
        changes = _settings_of(tree, problems, config, meta)
        if changes:
            shown = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
            raise ConfigError(
                f"{path} was sampled with other settings ({shown}): rerun with the settings "
                "it was made with, or choose another --out (or move that file away)"
            )


def _finished_batches(
    partial: Path,
    config: SamplerConfig,
    problems: Sequence[Problem],
    meta: dict | None = None,
) -> dict[int, list[dict]]:
    """Trees of the batches a crashed run finished; a torn last line or a half batch is dropped.

    Raises:
        ConfigError: the finished batches were sampled with other settings or problems.
    """
    by_batch: dict[int, list[dict]] = {}
    total = len(problems)
    if partial.is_file():
        for raw in partial.read_bytes().splitlines():
            try:
                tree = json.loads(raw)
                batch = tree["meta"]["batch"]
            except (ValueError, KeyError, TypeError):
                continue  # the line being written when the run stopped
            by_batch.setdefault(batch, []).append(tree)
        _check_same_settings(
            partial, (t for ts in by_batch.values() for t in ts), problems, config, meta
        )
    sizes = {
        b: min(config.problems_per_batch, total - b * config.problems_per_batch) for b in by_batch
    }
    return {b: trees for b, trees in by_batch.items() if len(trees) == sizes[b]}


def prepare_trees_file(
    out: Path, problems: Sequence[Problem], config: SamplerConfig, meta: dict | None
) -> tuple[Path, dict[int, list[dict]]] | None:
    """``None`` when ``out`` already holds these problems sampled with these settings;
    otherwise ``(partial file, finished batches)``, the partial file rewritten to hold only
    the finished batches. Shared by the plain and the Ray sampler.

    Raises:
        ConfigError: ``out`` or its partial file was sampled with other settings.
    """
    if out.is_file():
        # Reused only if it is what was asked for: same settings, same problems.
        stored = [t.to_dict() for t in read_trees(out)]
        _check_same_settings(out, stored, problems, config, meta)
        if len(stored) != len(problems):
            raise ConfigError(
                f"{out} holds {len(stored)} trees, {len(problems)} problems are asked for: "
                "choose another --out (or move that file away)"
            )
        logger.info("%s exists with these settings: nothing to sample", out)
        return None
    partial = partial_trees_path(out)
    done = _finished_batches(partial, config, problems, meta)
    if done:
        logger.info("resuming %s: %d batches already sampled", out, len(done))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Keep only the finished batches (a torn line or a half batch goes), atomically, so a
    # kill during this rewrite cannot lose them.
    lines = [json.dumps(t, ensure_ascii=False) + "\n" for b in sorted(done) for t in done[b]]
    write_text_atomic(partial, "".join(lines))
    return partial, done


def drop_overlong_problems(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: SamplerConfig,
) -> list[Problem]:
    """``problems`` without those whose prompt leaves less than ``max_total_tokens`` of the
    engine's context: skipped with one warning (their count and first ids), so one long
    training problem does not end the sampling of all the others.

    Raises:
        DataError: every problem is too long.
    """
    if isinstance(engine, HasContextLength):
        context = engine.max_model_len
    else:
        context = context_length(tokenizer)
    limit = prompt_token_limit(None, context, config.max_total_tokens)
    prompts = [build_prompt(tokenizer, p.question, config.system_prompt) for p in problems]
    overlong = overlong_prompts(tokenizer, prompts, limit)
    if not overlong:
        return list(problems)
    skipped = {index for index, _ in overlong}
    ids = ", ".join(problems[index].id for index, _ in overlong[:3])
    if len(skipped) == len(problems):
        raise DataError(
            f"every problem's prompt is longer than {limit} tokens (context {context} - "
            f"sampler.max_total_tokens {config.max_total_tokens}), e.g. {ids}"
        )
    logger.warning(
        "skipped %d of %d problems whose prompt is longer than %d tokens (context %d - "
        "sampler.max_total_tokens %d): %s%s",
        len(skipped), len(problems), limit, context, config.max_total_tokens, ids,
        ", ..." if len(skipped) > 3 else "",
    )  # fmt: skip
    return [p for index, p in enumerate(problems) if index not in skipped]


def sample_to_file(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: SamplerConfig,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    meta: dict | None = None,
) -> Path:
    """Sample trees into ``out`` (gzip JSONL), resuming after a crash.

    Each finished batch is appended to ``<out>.partial.jsonl`` at once; a rerun keeps the
    finished batches and samples only the rest (same trees as an uninterrupted run). The
    final file is written atomically and the partial file removed. Problems whose prompt is
    too long for the engine are skipped with a warning (:func:`drop_overlong_problems`). An
    existing ``out`` is left as it is when it holds these problems sampled with these
    settings.

    Raises:
        ConfigError: ``out`` or its partial file was sampled with other settings (sampler
            config, ``meta`` such as the model, or other problems): never mixed, never replaced.
    """
    out = Path(out)
    problems = drop_overlong_problems(engine, tokenizer, problems, config)
    prepared = prepare_trees_file(out, problems, config, meta)
    if prepared is None:
        return out
    partial, done = prepared
    with reporting_disk_full(partial), partial.open("a", encoding="utf-8") as handle:
        for tree in sample_trees(
            engine, tokenizer, problems, config, progress=progress, meta=meta, skip_batches=done
        ):
            handle.write(json.dumps(tree.to_dict(), ensure_ascii=False) + "\n")
            handle.flush()
    merge_tree_files([partial], out, partial_ok=True)
    partial.unlink()
    return out


def shard(problems: Sequence[Problem], spec: str | None) -> list[Problem]:
    """Problems of shard ``"i/n"`` (every n-th problem from the i-th; ``None``: all of them)."""
    if spec is None:
        return list(problems)
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), not {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    return list(problems[index::count])


def merge_tree_files(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    partial_ok: bool = False,
) -> int:
    """Merge tree files (gzip shards or a partial JSONL) into ``out``, ordered by problem index.

    Raises ``ValueError`` when two files hold a tree for the same problem.
    """
    trees: dict[str, StepTree] = {}
    for path in map(Path, inputs):
        if partial_ok and path.suffix == ".jsonl":
            loaded = (StepTree.from_dict(json.loads(line)) for line in path.open(encoding="utf-8"))
        else:
            loaded = read_trees(path)
        for tree in loaded:
            if tree.problem.id in trees:
                raise ValueError(f"{path}: a second tree for problem {tree.problem.id}")
            trees[tree.problem.id] = tree
    ordered = sorted(trees.values(), key=_index_in_data_set)
    return write_trees(out, ordered)


def _index_in_data_set(tree: StepTree) -> int:
    """Position of the tree's problem in the unsharded problem list."""
    index, count = (int(x) for x in (tree.meta.get("shard") or "0/1").split("/"))
    return index + tree.meta.get("problem_index", 0) * count
