from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sppd_lib.config import SamplerConfig
from sppd_lib.data import load_problems
from sppd_lib.engines import SamplingSettings
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.prompts import has_final_answer, prompt_token_ids
from sppd_lib.sampler import sample_trees
from sppd_lib.tree import StepTree


@pytest.fixture(scope="module")
def engine(tiny_llama):
    model, tokenizer = tiny_llama
    return TransformersEngine(model, tokenizer)


@pytest.fixture(scope="module")
def problems():
    return load_problems("arith", "train", limit=3)


def check_invariants(tree: StepTree, config: SamplerConfig) -> None:
    for node in tree.nodes[1:]:
        parent = tree.nodes[node.parent_id]
        assert node.depth == parent.depth + 1 <= config.max_depth
        assert len(node.token_ids) == len(node.logprobs) <= config.max_step_tokens
        assert all(lp <= 0 for lp in node.logprobs)
        if node.terminal:
            assert tree.children(node.id) == []
        else:
            assert node.finish_reason != "eos"
    for parent in tree.nodes:
        kids = tree.children(parent.id)
        assert len(kids) in ((0, config.c) if config.branch_surprisal is None else (0, 1, config.c))
        if len(kids) == 1 < config.c:  # entropy-guided branching: a confident first step
            assert -kids[0].mean_logprob < config.branch_surprisal
        for kid in kids:  # siblings share the prefix
            assert tree.prefix_ids(kid.id)[: -len(kid.token_ids) or None] == tree.prefix_ids(
                parent.id
            )
    for path in tree.complete_paths():
        assert path[-1].terminal_reason == "answer"
        if config.answer_format == "boxed":
            assert has_final_answer(path[-1].text)
        assert path[-1].correct is not None


def test_same_seed_same_tree(engine, tiny_llama, problems) -> None:
    _, tokenizer = tiny_llama
    config = SamplerConfig(k=4, c=2, max_step_tokens=6, max_depth=3, problems_per_batch=2)
    first = [t.to_dict() for t in sample_trees(engine, tokenizer, problems, config, progress=False)]
    again = [t.to_dict() for t in sample_trees(engine, tokenizer, problems, config, progress=False)]
    assert first == again
    other = SamplerConfig(**{**config.__dict__, "seed": 1})
    different = [
        t.to_dict() for t in sample_trees(engine, tokenizer, problems, other, progress=False)
    ]
    assert different != first
    assert [t["problem"]["id"] for t in first] == [p.id for p in problems]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k=st.integers(1, 5),
    c=st.integers(1, 3),
    max_step_tokens=st.integers(1, 6),
    max_depth=st.integers(1, 4),
    max_total_tokens=st.integers(1, 20),
    selection=st.sampled_from(["logprob", "uniform"]),
    skip_closed=st.booleans(),
    answer_format=st.sampled_from(["boxed", "any"]),
    passes_per_round=st.integers(1, 3),
    branch_surprisal=st.sampled_from([None, 0.0, 2.0, 1e9]),
)
def test_structural_invariants(engine, tiny_llama, problems, **options) -> None:
    _, tokenizer = tiny_llama
    config = SamplerConfig(temperature=1.0, problems_per_batch=2, **options)
    for tree in sample_trees(engine, tokenizer, problems[:2], config, progress=False):
        check_invariants(tree, config)
        assert len(tree.nodes) - 1 <= config.k * config.c


@pytest.mark.parametrize("streaming", [False, True])
def test_entropy_guided_branching_widens_only_uncertain_steps(
    engine, tiny_llama, problems, streaming
) -> None:
    _, tokenizer = tiny_llama
    sampler = StreamingTransformers(engine, order_seed=0, per_collect=3) if streaming else engine
    base = dict(k=6, c=3, max_step_tokens=5, max_depth=4, temperature=1.0, passes_per_round=2)
    surprisals = []
    for threshold in (0.0, 1e9):  # every step uncertain / every step confident
        config = SamplerConfig(**base, branch_surprisal=threshold)
        for tree in sample_trees(sampler, tokenizer, problems, config, progress=False):
            check_invariants(tree, config)
            counts = {len(tree.children(n.id)) for n in tree.nodes} - {0}
            assert counts == ({3} if threshold == 0 else {1})
            surprisals += [-n.mean_logprob for n in tree.nodes[1:]]
    middle = sorted(surprisals)[len(surprisals) // 2]
    config = SamplerConfig(**base, branch_surprisal=middle)
    trees = list(sample_trees(sampler, tokenizer, problems, config, progress=False))
    for tree in trees:
        check_invariants(tree, config)  # a single child only below the threshold
        for node in tree.nodes:
            kids = tree.children(node.id)
            if len(kids) == 3:  # the first child (sampled alone) was uncertain
                assert -kids[0].mean_logprob >= middle
    counts = [len(tree.children(n.id)) for tree in trees for n in tree.nodes]
    assert 1 in counts and 3 in counts  # both kinds of expansion happened
    again = list(sample_trees(sampler, tokenizer, problems, config, progress=False))
    assert [t.to_dict() for t in again] == [t.to_dict() for t in trees]


def test_recorded_logprobs_equal_a_fresh_forward(engine, tiny_llama, problems) -> None:
    model, tokenizer = tiny_llama
    config = SamplerConfig(k=3, c=2, max_step_tokens=8, max_depth=3, temperature=1.0)
    for tree in sample_trees(engine, tokenizer, problems[:2], config, progress=False):
        for node in tree.nodes[1:]:
            ids = tree.prefix_ids(node.id)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].float()
            start = len(ids) - len(node.token_ids)
            fresh = torch.log_softmax(logits[start - 1 : -1], -1)
            fresh = fresh.gather(1, torch.tensor(node.token_ids)[:, None]).squeeze(1)
            assert torch.allclose(fresh, torch.tensor(node.logprobs), atol=1e-4)


def test_engine_stops_at_delimiter_and_eos(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    prefix = prompt_token_ids(tokenizer, "2+2?")
    # A random model rarely emits "\n\n"; a one-character delimiter it does emit is "e".
    out = engine.sample([prefix], 4, SamplingSettings(max_tokens=30, temperature=1.0, stop="e"))
    for continuation in out[0]:
        if continuation.finish_reason == "delimiter":
            assert "e" in continuation.text
            assert "e" not in tokenizer.decode(continuation.token_ids[:-1])  # stopped at once
        else:
            assert continuation.finish_reason == "length" and len(continuation.token_ids) == 30
    assert any(c.finish_reason == "delimiter" for c in out[0])
    greedy = engine.sample([prefix, prefix], 2, SamplingSettings(max_tokens=5, temperature=0))
    assert len({tuple(c.token_ids) for cs in greedy for c in cs}) == 1


def test_engine_reports_eos(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    engine.eos_ids = frozenset(range(len(tokenizer)))  # every token ends the sequence
    out = engine.sample([[1, 2, 3]], 2, SamplingSettings(max_tokens=5))
    assert all(c.finish_reason == "eos" and len(c.token_ids) == 1 for c in out[0])


def test_bad_sampler_config() -> None:
    with pytest.raises(ValueError, match=r"sampler\.k must be >= 1"):
        SamplerConfig(k=0)
    with pytest.raises(ValueError, match="answer_format"):
        SamplerConfig(answer_format="latex")
    with pytest.raises(ValueError, match="selection"):
        SamplerConfig(selection="greedy")
    with pytest.raises(ValueError, match=r"sampler\.branch_surprisal must be >= 0, got -0\.5"):
        SamplerConfig(branch_surprisal=-0.5)


def test_kv_reuse_gives_the_same_trees_as_recomputation(tiny_llama, problems) -> None:
    model, tokenizer = tiny_llama
    config = SamplerConfig(k=6, c=2, max_step_tokens=6, max_depth=4, temperature=1.0)
    trees = {}
    for name, budget in (("reuse", 100_000), ("recompute", 0), ("evicting", 12)):
        engine = TransformersEngine(model, tokenizer, kv_cache_tokens=budget)
        trees[name] = list(sample_trees(engine, tokenizer, problems, config, progress=False))
        if name == "reuse":
            assert engine.prefix_tokens_reused > 0  # the last pass reused earlier steps' KV
        if name == "recompute":
            assert engine.prefix_tokens_reused == 0
    for name in ("recompute", "evicting"):
        for a, b in zip(trees["reuse"], trees[name], strict=True):
            assert [n.token_ids for n in a.nodes] == [n.token_ids for n in b.nodes]
            for x, y in zip(a.nodes, b.nodes, strict=True):
                assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


class CrashingEngine:
    """Wraps the real engine and fails on call ``crash_at`` (a crash in the middle of a run)."""

    def __init__(self, engine: TransformersEngine, crash_at: int) -> None:
        self.engine, self.crash_at, self.calls = engine, crash_at, 0

    def sample(self, prefixes, n, settings):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.engine.sample(prefixes, n, settings)


def test_sample_to_file_resumes_after_a_crash(tiny_llama, tmp_path) -> None:
    from sppd_lib.sampler import sample_to_file
    from sppd_lib.tree import read_trees

    model, tokenizer = tiny_llama
    problems = load_problems("arith", "train", limit=3)
    config = SamplerConfig(k=2, c=2, max_step_tokens=5, max_depth=2, problems_per_batch=1)
    reference = sample_to_file(
        TransformersEngine(model, tokenizer),
        tokenizer,
        problems,
        config,
        tmp_path / "ref.gz",
        progress=False,
    )
    out = tmp_path / "trees.jsonl.gz"
    crashing = CrashingEngine(TransformersEngine(model, tokenizer), crash_at=4)  # in batch 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample_to_file(crashing, tokenizer, problems, config, out, progress=False)
    assert not out.exists()
    assert (tmp_path / "trees.jsonl.gz.partial.jsonl").read_text().count("\n") == 1  # batch 0
    counting = CrashingEngine(TransformersEngine(model, tokenizer), crash_at=-1)
    sample_to_file(counting, tokenizer, problems, config, out, progress=False)
    assert counting.calls == 4  # batches 1 and 2 only (2 passes each)
    assert [t.to_dict() for t in read_trees(out)] == [t.to_dict() for t in read_trees(reference)]
    assert not (tmp_path / "trees.jsonl.gz.partial.jsonl").exists()


def test_cli_sample_shards_and_merge(tmp_path, capsys) -> None:
    from sppd_lib.cli import main
    from sppd_lib.tree import read_trees

    common = ["sample", "--model", "tiny-llama", "--dataset", "arith", "--limit", "5"]
    common += [
        "--k",
        "2",
        "--max-step-tokens",
        "4",
        "--max-depth",
        "2",
        "--problems-per-batch",
        "2",
    ]
    for index in (0, 1):
        out = str(tmp_path / f"shard{index}.jsonl.gz")
        assert main([*common, "--shard", f"{index}/2", "--out", out]) == 0
    assert "trees" in capsys.readouterr().out
    shards = [str(tmp_path / f"shard{i}.jsonl.gz") for i in (0, 1)]
    assert main(["merge-trees", *shards, "--out", str(tmp_path / "all.jsonl.gz")]) == 0
    merged = list(read_trees(tmp_path / "all.jsonl.gz"))
    assert [t.problem.id for t in merged] == [f"arith/train/{i}" for i in range(5)]
    assert main(["merge-trees", shards[0], shards[0], "--out", str(tmp_path / "x.gz")]) == 2
    assert "a second tree for problem" in capsys.readouterr().err
    assert main([*common, "--shard", "2/2", "--out", str(tmp_path / "bad.gz")]) == 2
    assert "shard index must be in 0..1" in capsys.readouterr().err
    assert main([*common, "--answer-format", "latex", "--out", str(tmp_path / "bad.gz")]) == 2
    assert "answer_format" in capsys.readouterr().err


@pytest.mark.slow
def test_real_model_trees_hold_correct_and_wrong_leaves(smollm2_trees) -> None:
    trees, config = smollm2_trees
    leaves = [leaf for tree in trees for leaf in tree.complete_leaves()]
    correct = sum(bool(leaf.correct) for leaf in leaves)
    print(f"transformers trees: {len(leaves)} complete leaves, {correct} correct")
    assert 0 < correct < len(leaves)
    for tree in trees:
        check_invariants(tree, config)


class StreamingTransformers:
    """The streaming protocol (``submit`` / ``collect`` / ``pending`` / ``abort``, as
    ``VLLMEngine`` has it) over the real transformers engine: each request is sampled alone
    with its own seed, and ``collect`` hands finished requests back in a shuffled order (a
    stand-in for vLLM's completion order, which depends on step lengths and load)."""

    def __init__(self, engine: TransformersEngine, order_seed: int, per_collect: int = 2) -> None:
        import random

        self.engine, self.rng, self.per_collect = engine, random.Random(order_seed), per_collect
        self.queue: dict[str, tuple] = {}
        self.collects = 0

    def sample(self, prefixes, n, settings):  # a streaming engine is an engine too
        return self.engine.sample(prefixes, n, settings)

    def submit(self, request_id, prefix, n, settings) -> None:
        assert request_id not in self.queue
        self.queue[request_id] = (list(prefix), n, settings)

    def pending(self) -> int:
        return len(self.queue)

    def abort(self) -> None:
        self.queue.clear()

    def collect(self):
        self.collects += 1
        ids = list(self.queue)
        self.rng.shuffle(ids)
        done = []
        for request_id in ids[: self.rng.randint(1, self.per_collect)]:
            prefix, n, settings = self.queue.pop(request_id)
            done.append((request_id, self.engine.sample([prefix], n, settings)[0]))
        return done


def test_streaming_trees_do_not_depend_on_batching_or_completion_order(
    engine, tiny_llama, problems
) -> None:
    _, tokenizer = tiny_llama
    config = SamplerConfig(
        k=6, c=2, max_step_tokens=5, max_depth=4, temperature=1.0, passes_per_round=3
    )
    runs = {}
    cases = (("a", 3, 0, None), ("b", 1, 1, None), ("c", 2, 2, None), ("d", 3, 3, None))
    cases += (("wide a", 3, 0, 1.0), ("wide b", 1, 1, 1.0), ("wide c", 2, 4, 1.0))
    for name, batch, order, threshold in cases:
        streaming = StreamingTransformers(engine, order_seed=order, per_collect=3)
        setting = SamplerConfig(
            **{**config.__dict__, "problems_per_batch": batch, "branch_surprisal": threshold}
        )
        trees = list(sample_trees(streaming, tokenizer, problems, setting, progress=False))
        assert streaming.pending() == 0
        for tree in trees:
            check_invariants(tree, setting)
            assert tree.meta["batch"] == tree.meta["problem_index"] // batch
        runs[name] = [[(n.parent_id, n.token_ids, n.logprobs) for n in t.nodes] for t in trees]
    assert runs["a"] == runs["b"] == runs["c"] == runs["d"]
    assert runs["wide a"] == runs["wide b"] == runs["wide c"] != runs["a"]
    assert sum(len(nodes) for nodes in runs["a"]) > 3 * 5  # the trees grew
    # The sampler chose the streaming driver on its own; the synchronous one seeds otherwise.
    sync = list(sample_trees(engine, tokenizer, problems, config, progress=False))
    assert [[(n.parent_id, n.token_ids) for n in t.nodes] for t in sync] != [
        [(p, t) for p, t, _ in nodes] for nodes in runs["a"]
    ]
    with pytest.raises(ValueError, match="cannot stream"):
        next(sample_trees(engine, tokenizer, problems, config, streaming=True))


class CrashingStream(StreamingTransformers):
    def __init__(self, engine: TransformersEngine, crash_at: int) -> None:
        super().__init__(engine, order_seed=5, per_collect=1)
        self.crash_at = crash_at

    def collect(self):
        if self.collects + 1 == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().collect()


def test_streaming_resume_after_a_crash_gives_the_same_trees(tiny_llama, tmp_path) -> None:
    from sppd_lib.sampler import sample_to_file
    from sppd_lib.tree import read_trees

    model, tokenizer = tiny_llama
    problems = load_problems("arith", "train", limit=4)
    config = SamplerConfig(k=3, c=2, max_step_tokens=4, max_depth=3, problems_per_batch=2)
    engine = TransformersEngine(model, tokenizer)
    reference = sample_to_file(
        StreamingTransformers(engine, 0), tokenizer, problems, config, tmp_path / "ref.gz"
    )
    out = tmp_path / "trees.jsonl.gz"
    crashing = CrashingStream(engine, crash_at=8)  # of about 12 collects
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample_to_file(crashing, tokenizer, problems, config, out, progress=False)
    assert crashing.pending() == 0  # the sampler aborted what was in flight
    partial = tmp_path / "trees.jsonl.gz.partial.jsonl"
    assert 0 < partial.read_text().count("\n") < 4  # some trees were written
    sample_to_file(CrashingStream(engine, -1), tokenizer, problems, config, out, progress=False)
    assert [t.to_dict() for t in read_trees(out)] == [t.to_dict() for t in read_trees(reference)]


def _same_continuations(a, b, atol: float = 1e-4) -> None:
    flat = [[c for cs in groups for c in cs] for groups in (a, b)]
    for x, y in zip(*flat, strict=True):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_cache_path_matches_the_dynamic_cache_path(arch) -> None:
    from sppd_lib.models import build_tiny_model

    model, tokenizer = build_tiny_model(arch, seed=0)
    # Prompts of different lengths that share the chat template (the shared-prefix prefill).
    prefixes = [prompt_token_ids(tokenizer, q) for q in ("2+2?", "What is 13*7 plus 5?", "x")]
    for settings_ in (
        SamplingSettings(max_tokens=20, temperature=1.0, stop="e", seed=3),
        SamplingSettings(max_tokens=25, temperature=0.0, stop=None),
    ):
        static = TransformersEngine(model, tokenizer, static_cache=True)
        assert static.static_cache
        dynamic = TransformersEngine(model, tokenizer, static_cache=False)
        _same_continuations(
            static.sample(prefixes, 3, settings_), dynamic.sample(prefixes, 3, settings_)
        )


def test_static_prefill_computes_the_shared_prefix_once(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    prefixes = [prompt_token_ids(tokenizer, q) for q in ("2+2?", "3+5?", "7*8?")]
    common = next(i for i in range(len(prefixes[0])) if len({p[i] for p in prefixes}) > 1)
    settings_ = SamplingSettings(max_tokens=4, temperature=1.0)
    first = engine.sample(prefixes, 2, settings_)
    assert engine.prefix_tokens_computed == sum(len(p) - 1 for p in prefixes) - 2 * (common - 1)
    # New prompts reuse the stored shared segment; results match a fresh engine's.
    others = [prompt_token_ids(tokenizer, q) for q in ("9-4?", "6+6?")]
    engine.sample(others, 2, settings_)
    assert engine.prefix_tokens_reused == 2 * (common - 1)
    fresh = TransformersEngine(model, tokenizer, static_cache=False)
    _same_continuations(first, fresh.sample(prefixes, 2, settings_))
    _same_continuations(engine.sample(others, 2, settings_), fresh.sample(others, 2, settings_))


def test_finished_rows_leaving_the_batch_leave_the_others_unchanged(tiny_llama) -> None:
    """The static path keeps finished rows' slots until an eighth of the batch has finished,
    then compacts; the DynamicCache path drops each at once. Both give the same samples."""
    model, tokenizer = tiny_llama
    prefixes = [prompt_token_ids(tokenizer, f"{a}+{b}?") for a in range(4) for b in range(4)]
    varied = SamplingSettings(max_tokens=30, temperature=1.0, stop="e", seed=5)
    static = TransformersEngine(model, tokenizer, static_cache=True).sample(prefixes, 2, varied)
    lengths = {len(c.token_ids) for cs in static for c in cs}
    assert len(lengths) > 3, lengths  # rows finished at several different steps
    dynamic = TransformersEngine(model, tokenizer, static_cache=False)
    _same_continuations(static, dynamic.sample(prefixes, 2, varied))


def test_prompt_lookup_draft() -> None:
    draft = TransformersEngine._draft
    assert draft([1, 2, 3, 4, 5, 1, 2, 3], 2) == [4, 5]  # after the earlier "1 2 3"
    assert draft([7, 2, 3, 9, 8, 2, 3], 3) == [9, 8, 2]  # no 3-gram match: the 2-gram's
    assert draft([1, 2, 3, 1, 2, 3, 1, 2, 3], 4) == [1, 2, 3]  # the latest occurrence
    assert draft([1, 2, 3, 4], 3) == [] and draft([1, 2, 1, 2], 0) == []


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_drafts_give_plain_greedy_decoding(arch) -> None:
    from sppd_lib.models import build_tiny_model

    model, tokenizer = build_tiny_model(arch, seed=0)
    prompt = prompt_token_ids(tokenizer, "2+2?")
    # The random model emits "\n" (198) forever; a prefix whose last 3-gram occurred before,
    # followed by other tokens, makes the first drafts wrong (rejections) and later ones right.
    tricky = [*prompt, 11, 198, 198, 1234, 567, 89, 11, 198, 198]
    prefixes = [prompt, tricky, prompt_token_ids(tokenizer, "What is 13*7 plus 5?")]
    for stop in (None, "\n"):
        greedy = SamplingSettings(max_tokens=25, temperature=0.0, stop=stop)
        drafting = TransformersEngine(model, tokenizer)
        out = drafting.sample(prefixes, 2, greedy)
        if stop is None:
            assert 0 < drafting.draft_tokens_accepted < drafting.draft_tokens_proposed
        plain = TransformersEngine(model, tokenizer, draft_tokens=0).sample(prefixes, 2, greedy)
        _same_continuations(out, plain)
        dynamic = TransformersEngine(model, tokenizer, static_cache=False)
        _same_continuations(out, dynamic.sample(prefixes, 2, greedy))
