"""Step trees: typed nodes, traversal, statistics and a lossless gzip-JSONL round trip.

Node 0 is the root: the prompt, with no step of its own. Every other node is one reasoning
step (an action of the step MDP of arXiv 2502.13516) whose state is the prompt plus the steps
on the path from the root. Token ids are the ground truth: the prefix of a node is
``prompt_ids + concat(token_ids on its path)``, exactly what the sampler fed the model, so the
recorded log-probs stay valid reference log-probs for training.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import typing
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sppd_lib.config.loading import choices_of, type_matches
from sppd_lib.data import DataError, Problem
from sppd_lib.files import atomic_path

__all__ = [
    "FinishReason",
    "StepNode",
    "StepTree",
    "TerminalReason",
    "TreeStats",
    "mean_logprob",
    "merge_identical_siblings",
    "read_trees",
    "write_trees",
]

ROOT = 0

#: How a step's generation ended: ``root`` (the prompt node), at the step ``delimiter``, at
#: ``eos`` or at the token ``length`` limit.
FinishReason = Literal["root", "delimiter", "eos", "length"]
#: Why a node is terminal: a final ``answer``, ``eos``, or the depth / token limit.
TerminalReason = Literal["answer", "eos", "max_depth", "max_tokens"]


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean token log-prob of one step (0 for an empty step)."""
    return sum(logprobs) / len(logprobs) if logprobs else 0.0


def _check_field(owner: str, name: str, value: Any, annotation: Any) -> None:
    """Raise ``ValueError`` naming ``owner.name`` when ``value`` does not fit ``annotation``
    (containers are checked one level deep: reading trees must stay fast)."""
    if type_matches(value, annotation, deep=False):
        return
    choices = choices_of(annotation)
    wanted = f"one of {choices}" if choices else getattr(annotation, "__name__", str(annotation))
    raise ValueError(f"{owner}: field {name!r} must be {wanted}, got {value!r}")


def _checked(cls: type, data: dict[str, Any], owner: str) -> dict[str, Any]:
    """``data`` if it holds known fields of dataclass ``cls`` of the right types, every
    required one among them; else ``ValueError`` naming ``owner`` and the field."""
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{owner}: unknown field {unknown[0]!r}")
    for item in dataclasses.fields(cls):
        required = item.default is dataclasses.MISSING and (
            item.default_factory is dataclasses.MISSING
        )
        if item.name not in data:
            if required:
                raise ValueError(f"{owner}: field {item.name!r} is missing")
            continue
        _check_field(owner, item.name, data[item.name], hints[item.name])
    return data


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass
class StepNode:
    """One step. ``logprobs[i]`` is the raw log-prob of ``token_ids[i]`` under the sampler."""

    id: int
    parent_id: int | None
    depth: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = "root"
    #: No children will be sampled: a final answer, EOS, or the depth / token limit.
    terminal: bool = False
    terminal_reason: TerminalReason | None = None
    answer: str | None = None
    correct: bool | None = None
    value: float | None = None
    value_source: str | None = None
    #: Estimator details: the Monte-Carlo counts behind a value (read them through
    #: :attr:`mc_correct` / :attr:`mc_total`), rollout outcomes, anything an estimator adds.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mc_correct(self) -> int | None:
        """Correct complete outcomes below the step (leaves and rollouts); ``None`` before a
        Monte-Carlo backup."""
        return self.info.get("mc_correct")

    @property
    def mc_total(self) -> int | None:
        """Complete outcomes below the step; ``None`` before a Monte-Carlo backup."""
        return self.info.get("mc_total")

    def set_mc_counts(self, correct: int, total: int) -> None:
        self.info["mc_correct"], self.info["mc_total"] = correct, total

    @property
    def mean_logprob(self) -> float:
        """Mean token log-prob of the step; the selection weight is its exp (SPPD §3)."""
        return mean_logprob(self.logprobs)

    @property
    def is_complete(self) -> bool:
        """A terminal step that states a final answer: the end of a complete trajectory."""
        return self.terminal and self.terminal_reason == "answer"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepNode:
        """A node from :meth:`to_dict`'s mapping; a missing, unknown or mistyped field is a
        ``ValueError`` that names it."""
        return cls(**_checked(cls, data, f"node {data.get('id', '?')}"))


@dataclass
class TreeStats:
    """Size and cost of a tree. ``flat_tokens`` is what a flat sampler would have generated
    for the same complete paths (each path written out in full)."""

    nodes: int
    leaves: int
    complete_paths: int
    correct_paths: int
    tokens_generated: int
    flat_tokens: int
    depth_histogram: dict[int, int]
    branching_histogram: dict[int, int]

    @property
    def token_ratio(self) -> float:
        """Tree tokens per flat token for the same complete paths (lower is better)."""
        return self.tokens_generated / self.flat_tokens if self.flat_tokens else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "token_ratio": self.token_ratio}


@dataclass
class StepTree:
    """All steps sampled for one problem."""

    problem: Problem
    prompt_ids: list[int]
    nodes: list[StepNode] = field(default_factory=list)
    #: The sampler settings and model that produced the tree.
    meta: dict[str, Any] = field(default_factory=dict)
    #: The prompt as text (chat template applied): what ``prompt_ids`` encode.
    prompt_text: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_text and "prompt_text" in self.meta:  # older files kept it in meta
            self.prompt_text = self.meta.pop("prompt_text")
        if not self.nodes:
            self.nodes = [StepNode(id=ROOT, parent_id=None, depth=0)]
        self._children: dict[int, list[int]] = {}
        for node in self.nodes[1:]:
            self._children.setdefault(node.parent_id, []).append(node.id)  # type: ignore[arg-type]

    # -- building -----------------------------------------------------------------------

    @property
    def root(self) -> StepNode:
        return self.nodes[ROOT]

    def add_child(self, parent_id: int, **fields: Any) -> StepNode:
        parent = self.nodes[parent_id]
        node = StepNode(id=len(self.nodes), parent_id=parent_id, depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        self._children.setdefault(parent_id, []).append(node.id)
        return node

    # -- traversal ----------------------------------------------------------------------

    def children(self, node_id: int) -> list[StepNode]:
        return [self.nodes[i] for i in self._children.get(node_id, [])]

    def siblings(self, node_id: int) -> list[StepNode]:
        """The other children of this node's parent."""
        parent = self.nodes[node_id].parent_id
        if parent is None:
            return []
        return [n for n in self.children(parent) if n.id != node_id]

    def path(self, node_id: int) -> list[StepNode]:
        """Steps from the root's first child down to ``node_id`` (the root itself left out)."""
        steps = []
        node = self.nodes[node_id]
        while node.parent_id is not None:
            steps.append(node)
            node = self.nodes[node.parent_id]
        return steps[::-1]

    def prefix_ids(self, node_id: int) -> list[int]:
        """The tokens the model sees after ``node_id``: prompt plus every step on the path."""
        ids = list(self.prompt_ids)
        for step in self.path(node_id):
            ids.extend(step.token_ids)
        return ids

    def path_text(self, node_id: int) -> str:
        return "".join(step.text for step in self.path(node_id))

    def leaves(self) -> list[StepNode]:
        return [n for n in self.nodes if n.id != ROOT and n.id not in self._children]

    def complete_leaves(self) -> list[StepNode]:
        return [n for n in self.leaves() if n.is_complete]

    def complete_paths(self) -> list[list[StepNode]]:
        """Root-to-leaf paths that end in a final answer (SPPD §3 collection)."""
        return [self.path(leaf.id) for leaf in self.complete_leaves()]

    def is_closed(self, node_id: int) -> bool:
        """True when nothing below ``node_id`` can still be expanded."""
        node = self.nodes[node_id]
        if node.terminal:
            return True
        kids = self._children.get(node_id)
        return bool(kids) and all(self.is_closed(k) for k in kids)

    # -- statistics ---------------------------------------------------------------------

    def stats(self) -> TreeStats:
        complete = self.complete_paths()
        return TreeStats(
            nodes=len(self.nodes) - 1,
            leaves=len(self.leaves()),
            complete_paths=len(complete),
            correct_paths=sum(bool(path[-1].correct) for path in complete),
            tokens_generated=sum(len(n.token_ids) for n in self.nodes),
            flat_tokens=sum(len(s.token_ids) for path in complete for s in path),
            depth_histogram=dict(sorted(Counter(n.depth for n in self.leaves()).items())),
            branching_histogram=dict(
                sorted(Counter(len(v) for v in self._children.values()).items())
            ),
        )

    # -- serialization ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem.to_dict(),
            "prompt_ids": self.prompt_ids,
            "nodes": [n.to_dict() for n in self.nodes],
            "meta": self.meta,
            "prompt_text": self.prompt_text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepTree:
        nodes = [StepNode.from_dict(n) for n in data["nodes"]]
        for index, node in enumerate(nodes):
            if node.id != index:
                raise ValueError(f"node ids must be 0..n-1 in order; found {node.id} at {index}")
        return cls(
            Problem.from_dict(data["problem"]),
            list(data["prompt_ids"]),
            nodes,
            data["meta"],
            data.get("prompt_text", ""),
        )


def _step_key(text: str) -> str:
    """Sibling steps with the same key say the same thing (whitespace does not count)."""
    return " ".join(text.split())


def _representative(copies: list[StepNode], children: dict[int, list[int]]) -> StepNode:
    """The copy that stays: one that grew children, else a complete one, else the first."""
    for copy in copies:
        if children.get(copy.id):
            return copy
    return next((copy for copy in copies if copy.is_complete), copies[0])


def merge_identical_siblings(tree: StepTree) -> int:
    """Merge sibling steps with the same text (whitespace aside) into one node, in place.

    The kept copy (one with children, else a complete one, else the first) takes the
    children of all copies (merged again one level down, and so on) and their evidence:
    rollout counts add up, and every other complete copy adds its outcome to
    ``info["merged_correct"]`` / ``info["merged_total"]``, which the value backups count as
    leaves of the node. So a sibling group never holds two equal steps, Monte-Carlo counts of
    every other node stay exactly as they were, and a pair with equal sides cannot arise.
    ``info["merged_ids"]`` keeps the ids the copies had. Node ids are renumbered (parents
    before children) only when something was merged. Returns the number of nodes removed.
    """
    children = {key: list(ids) for key, ids in tree._children.items()}
    if all(
        len({_step_key(tree.nodes[i].text) for i in ids}) == len(ids) for ids in children.values()
    ):
        return 0
    kept: list[tuple[StepNode, int | None]] = [(tree.nodes[ROOT], None)]  # (node, new parent)
    # Each entry: the new id of a kept node, and the old ids of its (merged) children.
    queue = deque([(ROOT, list(children.get(ROOT, [])))])
    removed = 0
    while queue:
        parent_new, child_ids = queue.popleft()
        groups: dict[str, list[StepNode]] = {}
        for child_id in sorted(child_ids):
            child = tree.nodes[child_id]
            groups.setdefault(_step_key(child.text), []).append(child)
        for copies in groups.values():
            keep = _representative(copies, children)
            info = dict(keep.info)
            grandchildren: list[int] = []
            for copy in copies:
                grandchildren.extend(children.get(copy.id, []))
                if copy is keep:
                    continue
                removed += 1
                for key in ("rollout_correct", "rollout_total", "merged_correct", "merged_total"):
                    info[key] = info.get(key, 0) + copy.info.get(key, 0)
                if copy.is_complete:
                    info["merged_total"] = info.get("merged_total", 0) + 1
                    info["merged_correct"] = info.get("merged_correct", 0) + int(bool(copy.correct))
            if len(copies) > 1:
                info["merged_ids"] = sorted(
                    {i for c in copies for i in (c.info.get("merged_ids") or [c.id])}
                )
            new_id = len(kept)
            kept.append((dataclasses.replace(keep, info=info), parent_new))
            queue.append((new_id, grandchildren))
    nodes = []
    for new_id, (node, parent_new) in enumerate(kept):
        parent_depth = nodes[parent_new].depth if parent_new is not None else -1
        nodes.append(
            dataclasses.replace(node, id=new_id, parent_id=parent_new, depth=parent_depth + 1)
        )
    tree.nodes = nodes
    tree._children = {}
    for node in nodes[1:]:
        tree._children.setdefault(node.parent_id, []).append(node.id)  # type: ignore[arg-type]
    return removed


def write_trees(path: str | os.PathLike[str], trees: Iterable[StepTree]) -> int:
    """Write trees as gzip JSONL (atomically); returns how many were written."""
    count = 0
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for tree in trees:
            handle.write(json.dumps(tree.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_trees(path: str | os.PathLike[str]) -> Iterator[StepTree]:
    """Stream trees from gzip JSONL. A bad line, or a file that is not gzip or is cut short,
    raises :class:`DataError` (a ``ValueError``) naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trees file not found: {path}")
    line_number = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                try:
                    tree = StepTree.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"{path}:{line_number}: not a step tree ({exc})") from None
                yield tree
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        where = f"after line {line_number}" if line_number else "at the start"
        raise DataError(
            f"{path}: not a complete gzip trees file, broken {where} ({type(exc).__name__}: "
            f"{exc}); sample it again (sppd sample) or restore it"
        ) from None
