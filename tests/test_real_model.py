"""The real embedded SmolLM2-135M-Instruct: samples are real, stop at end-of-turn, reproduce by seed."""
import pytest

from workbench.sampling import generate
from workbench.tasks import get_task


@pytest.fixture(scope="module")
def eight(real):
    prompts = get_task("instructions", n=4)
    return prompts, generate(prompts, model=real, n_per_prompt=2, max_new_tokens=96, seed=11, batch_size=8)


def test_eight_real_samples(eight):
    prompts, samples = eight
    assert len(samples) == 8 and samples["sample_id"].is_unique
    assert (samples["completion"].str.strip().str.len() > 0).all()
    assert not samples["completion"].str.contains("<|im_end|>", regex=False).any()
    assert (samples["finish_reason"] == "stop").sum() >= 4  # a chat model ends its turn
    stopped = samples[samples["finish_reason"] == "stop"]
    assert (stopped["n_completion_tokens"] < 96).all()
    # real English: mostly letters and spaces, words of ordinary length
    text = " ".join(samples["completion"])
    assert sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.85
    # two samples of one prompt differ (sampling at temperature 0.8)
    assert samples.groupby("prompt_id")["completion"].nunique().max() == 2


def test_reproducible_by_seed(real, eight):
    prompts, samples = eight
    again = generate(prompts, model=real, n_per_prompt=2, max_new_tokens=96, seed=11, batch_size=3)
    assert list(again["completion"]) == list(samples["completion"])
    assert list(again["sample_id"]) == list(samples["sample_id"])


def test_real_model_into_a_run(real, tmp_path):
    from workbench import Run

    run = Run(tmp_path / "r")
    samples = generate(get_task("arithmetic", n=4), model=real, max_new_tokens=24, run=run, temperature=0)
    assert len(run.read("samples")) == 4 and run.ledger()["completion_tokens"].sum() == samples[
        "n_completion_tokens"].sum()
    # greedy answers contain digits: the model at least attempts the sums
    assert samples["completion"].str.contains(r"\d").mean() >= 0.75
