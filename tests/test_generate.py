"""generate(): schema, reproducibility, bad input, runs and resume (tiny model; one real-model test file)."""
import warnings

import pandas as pd
import pytest

from workbench import Run
from workbench.errors import InputDataError, RunConfigError
from workbench.sampling import SAMPLE_COLUMNS, generate
from workbench.tasks import get_task

FAST = dict(max_new_tokens=12, batch_size=4)


def test_rows_and_schema(tiny):
    prompts = get_task("arithmetic", n=5)
    samples = generate(prompts, model=tiny, n_per_prompt=3, **FAST)
    assert len(samples) == 15
    assert list(samples.columns[: len(SAMPLE_COLUMNS)]) == SAMPLE_COLUMNS
    assert samples["sample_id"].is_unique
    assert set(samples["finish_reason"]) <= {"stop", "length"}
    assert (samples["n_completion_tokens"] <= 12).all()
    assert (samples.loc[samples["finish_reason"] == "length", "n_completion_tokens"] == 12).all()
    assert samples["reference"].notna().all()  # task columns ride along
    assert list(samples["prompt_id"]) == [p for p in prompts["prompt_id"] for _ in range(3)]


def test_same_seed_same_rows_other_seed_other_rows(tiny):
    prompts = get_task("instructions", n=6)
    a = generate(prompts, model=tiny, seed=1, **FAST)
    b = generate(prompts, model=tiny, seed=1, **dict(FAST, batch_size=2))  # other batching, same rows
    c = generate(prompts, model=tiny, seed=2, **FAST)
    pd.testing.assert_frame_equal(a, b)
    assert not set(a["sample_id"]) & set(c["sample_id"])
    assert (a["completion"] != c["completion"]).any()


def test_hf_engine_gives_same_schema(tiny):
    prompts = get_task("arithmetic", n=3)
    fast = generate(prompts, model=tiny, temperature=0, engine="fast", **FAST)
    hf = generate(prompts, model=tiny, temperature=0, engine="hf", **FAST)
    assert list(fast.columns) == list(hf.columns)
    assert list(fast["completion"]) == list(hf["completion"])  # greedy: both are exact


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_new_tokens=0), "max_new_tokens must be positive"),
    (dict(max_new_tokens=-3), "max_new_tokens must be positive"),
    (dict(n_per_prompt=0), "n_per_prompt"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(max_new_tokens=10_000), "leaves no room"),
])
def test_bad_parameters(tiny, kwargs, needle):
    with pytest.raises(InputDataError, match=needle) as info:
        generate(["hello"], model=tiny, **kwargs)
    assert "Fix:" in str(info.value)


def test_zero_prompts(tiny):
    with pytest.raises(InputDataError, match="zero prompts"):
        generate(pd.DataFrame({"prompt": []}), model=tiny)
    with pytest.raises(InputDataError, match="no 'prompt' column"):
        generate(pd.DataFrame({"text": ["a"]}), model=tiny)


def test_long_prompt_truncated_with_warning_and_counted(tiny, tmp_path):
    run = Run(tmp_path / "run")
    long_prompt = "word " * 400  # the tiny model's context is 256 tokens
    with pytest.warns(UserWarning, match="longer than the context"):
        samples = generate([long_prompt, "short"], model=tiny, run=run, max_new_tokens=8)
    assert list(samples["prompt_truncated"]) == [True, False]
    assert samples.loc[0, "n_prompt_tokens"] == 256 - 8
    assert run.ledger()["truncated_prompts"].sum() == 1
    assert run.summary()["truncated_prompts"].sum() == 1


def test_run_checkpoints_and_resumes_without_duplicates(tiny, tmp_path):
    run = Run(tmp_path / "run")
    prompts = get_task("instructions", n=10)
    first = generate(prompts.head(6), model=tiny, run=run, checkpoint_every=2, **FAST)
    assert len(run.parts("samples")) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a different prompt set is a different config: refused
        with pytest.raises(RunConfigError, match="different configuration"):
            generate(prompts, model=tiny, run=run, checkpoint_every=2, **FAST)
    again = generate(prompts.head(6), model=tiny, run=run, checkpoint_every=2, **FAST)
    assert len(run.parts("samples")) == 3  # nothing regenerated
    pd.testing.assert_frame_equal(first, again)


def test_config_mismatch_refused_and_nothing_lost(tiny, tmp_path):
    run = Run(tmp_path / "run")
    prompts = get_task("arithmetic", n=4)
    generate(prompts, model=tiny, run=run, **FAST)
    before = {p.name: p.read_bytes() for p in run.parts("samples")}
    with pytest.raises(RunConfigError) as info:
        generate(prompts, model=tiny, run=run, temperature=0.3, **FAST)
    message = str(info.value)
    assert "temperature: run has 0.8, now 0.3" in message and "new run folder" in message
    assert {p.name: p.read_bytes() for p in run.parts("samples")} == before
    assert len(run.read("samples")) == 4
