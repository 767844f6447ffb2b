"""Judge-bias probes on fake judges with known biases, audit_table, and run_probes with the real SelfJudge."""
import time

import numpy as np
import pandas as pd
import pytest

from workbench.metrics import (audit_table, authority_bias, position_bias, run_probes, self_preference,
                               verbosity_bias)
from workbench.metrics.probes import DEFAULT_PAD, MIN_N


class LengthJudge:
    """Pointwise: 0.4, plus 0.1 for a completion longer than `cutoff` characters, plus N(0, noise) per call."""

    def __init__(self, cutoff=30, noise=0.03, seed=0):
        self.cutoff, self.noise, self.rng, self.items = cutoff, noise, np.random.default_rng(seed), 0

    def score(self, samples):
        self.items += len(samples)
        longer = samples["completion"].str.len().to_numpy() > self.cutoff
        return pd.Series(0.4 + 0.1 * longer + self.rng.normal(0, self.noise, len(samples)), index=samples.index)


class FirstSlotJudge:
    """Pairwise, blind to content: the answer shown first wins with probability p_first. stochastic=True
    returns a hard 0/1 verdict drawn with that probability, else p_first itself."""

    def __init__(self, p_first=0.7, stochastic=False, seed=0):
        self.p_first, self.stochastic, self.rng = p_first, stochastic, np.random.default_rng(seed)

    def prob_first(self, prompts, first, second):
        assert len(prompts) == len(first) == len(second)
        if self.stochastic:
            return (self.rng.uniform(size=len(first)) < self.p_first).astype(float)
        return np.full(len(first), self.p_first)


class LongerWinsJudge:
    """Pairwise, order-blind: the longer answer wins with probability 0.8, equal lengths 0.5."""

    def prob_first(self, prompts, first, second):
        return np.array([0.5 + 0.3 * np.sign(len(a) - len(b)) for a, b in zip(first, second)])


def samples(prompts=50, per_prompt=4):
    """`per_prompt` short answers per prompt, half of them correct (verifier 1), with a reference column."""
    rows = []
    for p in range(prompts):
        for k in range(per_prompt):
            correct = k % 2 == 0
            rows.append({"sample_id": f"s{p}-{k}", "prompt_id": f"p{p}", "prompt": f"What is {p} + {p}?",
                         "completion": f"{2 * p if correct else 2 * p + k} is it {'ok' * k}",
                         "reference": str(2 * p), "score__verifier": float(correct)})
    return pd.DataFrame(rows)


def test_verbosity_of_a_pointwise_judge_that_rewards_length():
    result = verbosity_bias(LengthJudge(), samples())
    assert result["estimate"] == pytest.approx(0.1, abs=0.01)
    assert result["ci_low"] <= 0.1 <= result["ci_high"] and result["ci_high"] - result["ci_low"] < 0.03
    assert result["n"] == 200 and result["warning"] is None and result["suffix"] == DEFAULT_PAD
    assert "bootstrap" in result["ci_method"]
    # a pad that keeps the text under the cutoff changes nothing
    short = verbosity_bias(LengthJudge(cutoff=1000), samples(), pad=" Indeed.")
    assert short["ci_low"] <= 0 <= short["ci_high"]


def test_position_bias_is_not_applicable_to_a_pointwise_judge():
    result = position_bias(LengthJudge(), samples())
    assert not result["applicable"] and np.isnan(result["estimate"]) and "not applicable" in result["warning"]


def test_position_bias_of_a_first_slot_judge():
    fixed = position_bias(FirstSlotJudge(0.7), samples())
    assert fixed["estimate"] == pytest.approx(0.7) and fixed["n_identical"] == 200 and fixed["n_matched"] == 100
    assert fixed["n"] == 300 and fixed["swap_consistency"]["estimate"] == 0.0  # first always wins: never agree
    drawn = position_bias(FirstSlotJudge(0.7, stochastic=True), samples())
    # hard 0/1 verdicts: the estimates scatter around the truth (a 95% CI misses it 1 time in 20, so check
    # the distance in CI widths rather than coverage under one seed)
    assert drawn["estimate"] == pytest.approx(0.7, abs=drawn["ci_high"] - drawn["ci_low"])
    assert drawn["ci_low"] < drawn["estimate"] < drawn["ci_high"] and drawn["ci_high"] - drawn["ci_low"] < 0.15
    swap = drawn["swap_consistency"]  # the two orders agree when exactly one of them lets the first win
    assert swap["n"] == 100 and swap["estimate"] == pytest.approx(2 * 0.7 * 0.3, abs=swap["ci_high"] - swap["ci_low"])
    blind = position_bias(LongerWinsJudge(), samples())
    assert blind["estimate"] == pytest.approx(0.5) and blind["swap_consistency"]["estimate"] == 1.0


def test_position_bias_without_a_verifier_uses_identical_pairs_only():
    result = position_bias(FirstSlotJudge(0.7), samples().drop(columns="score__verifier"))
    assert result["n_matched"] == 0 and result["estimate"] == pytest.approx(0.7)
    swap = result["swap_consistency"]
    assert np.isnan(swap["estimate"]) and "no distinct pairs" in swap["warning"]


def test_pairwise_verbosity_authority_and_self_preference():
    judge = LongerWinsJudge()
    assert verbosity_bias(judge, samples())["estimate"] == pytest.approx(0.8)
    assert authority_bias(judge, samples())["estimate"] == pytest.approx(0.8)
    result = self_preference(judge, samples())  # own correct answers are longer than the bare references
    assert result["estimate"] == pytest.approx(0.8) and result["n"] == 50 and result["dropped_incorrect"] == 100
    correlation = result["perplexity_correlation"]  # no local model behind a fake judge
    assert np.isnan(correlation["estimate"]) and "model" in correlation["warning"]


def test_self_preference_pointwise_pairs_correct_own_answers_with_references():
    frame = samples()
    frame.loc[0, "completion"] = frame.loc[0, "reference"]  # identical to the reference: dropped
    result = self_preference(LengthJudge(cutoff=5, noise=0.0), frame)
    assert result["dropped_identical_to_reference"] == 1 and result["n_own"] == 99 and result["n"] == 50
    assert result["estimate"] == pytest.approx(0.1)  # own answers (> 5 chars) beat the references (<= 3)
    missing = self_preference(LengthJudge(), frame.drop(columns="reference"))
    assert np.isnan(missing["estimate"]) and "reference" in missing["warning"]


def test_small_and_empty_inputs_warn_instead_of_failing():
    few = samples(prompts=3)
    for probe in (verbosity_bias, authority_bias):
        result = probe(LengthJudge(), few)
        assert result["n"] == 12 and np.isfinite(result["estimate"]) and f"< {MIN_N}" in result["warning"]
    assert "< 20" in position_bias(FirstSlotJudge(), few)["swap_consistency"]["warning"]
    for empty in (samples().iloc[:0], pd.DataFrame()):
        for judge in (LengthJudge(), FirstSlotJudge()):
            table = run_probes(judge, empty)
            assert len(table) == 6 and table["estimate"].isna().all() and table["warning"].notna().all()
            assert (table["n"] == 0).all()


def test_run_probes_table_and_scores_each_text_once():
    judge = LengthJudge()
    table = run_probes(judge, samples(prompts=10), n_boot=200)
    assert list(table.columns) == ["probe", "measure", "estimate", "ci_low", "ci_high", "n", "ci_method", "warning"]
    assert list(table["probe"]) == ["position_bias", "swap_consistency", "verbosity_bias", "authority_bias",
                                    "self_preference", "self_preference_perplexity"]
    # 40 originals once, 40 padded, 40 with the claim, 10 references (the correct own answers are originals)
    assert judge.items == 40 + 40 + 40 + 10
    pairwise = run_probes(LongerWinsJudge(), samples(prompts=10), n_boot=200)
    assert pairwise.set_index("probe").loc["swap_consistency", "estimate"] == 1.0


def graded_table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    verifier = rng.integers(0, 2, n).astype(float)
    trained = np.arange(n) < n // 4
    panel = np.where(trained, verifier, 1 - verifier)  # in-sample perfect, inverted elsewhere
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "score__verifier": verifier,
                         "score__perfect": verifier * 0.5 + rng.uniform(0, 0.4, n),
                         "score__random": rng.uniform(size=n), "score__panel": panel,
                         "trained_on__panel": trained})


def test_audit_table_ranks_graders_and_excludes_trained_rows():
    graded = graded_table()
    table = audit_table(graded, n_boot=200)
    assert list(table["grader"]) == ["perfect", "random", "panel"] and set(table["against"]) == {"verifier"}
    by = table.set_index("grader")
    assert by.loc["perfect", "roc_auc"] == 1.0 and by.loc["perfect", "rank"] == 1
    assert by.loc["random", "ci_low"] < 0.5 < by.loc["random", "ci_high"]
    assert by.loc["panel", "roc_auc"] == 0.0  # its memorised training rows do not count
    assert by.loc["panel", "n"] == 300 and by.loc["panel", "excluded_trained"] == 100 and by.loc["random", "n"] == 400
    labels = {sid: "good" if v else "bad" for sid, v in zip(graded["sample_id"][:100], graded["score__verifier"][:100])}
    with_humans = audit_table(graded, human_labels={**labels, "s399": "unsure"}, n_boot=100)
    humans = with_humans[with_humans["against"] == "human"].set_index("grader")
    assert humans.loc["verifier", "roc_auc"] == 1.0 and humans.loc["random", "n"] == 100
    assert humans.loc["panel", "n"] == 0 and np.isnan(humans.loc["panel", "roc_auc"])  # rows 0..99 all trained
    empty = audit_table(graded.iloc[:0])
    assert len(empty) == 3 and empty["roc_auc"].isna().all() and (empty["n"] == 0).all()


@pytest.mark.real_model
def test_run_probes_with_the_real_self_judge(real):
    from workbench.graders import SelfJudge
    from workbench.tasks import arithmetic

    problems = arithmetic(n=8, seed=3)  # 16 samples: ~70 judge passes and 16 perplexities, ~20 s on 2 cores
    rows = []
    for _, problem in problems.iterrows():  # a correct answer in the model's style and a wrong bare number
        rows.append({**problem, "completion": f"The answer is {problem['reference']}.", "score__verifier": 1.0})
        rows.append({**problem, "completion": str(int(problem["reference"]) + 7), "score__verifier": 0.0})
    frame = pd.DataFrame(rows)
    start = time.perf_counter()
    table = run_probes(SelfJudge(model=real), frame, n_boot=300)
    elapsed = time.perf_counter() - start
    print(table.to_string(), f"\n{elapsed:.1f} s")
    assert table.shape == (6, 8)
    by = table.set_index("probe")
    assert "not applicable" in by.loc["position_bias", "warning"]
    estimated = by.loc[["verbosity_bias", "authority_bias", "self_preference", "self_preference_perplexity"]]
    assert np.isfinite(estimated[["estimate", "ci_low", "ci_high"]].to_numpy(float)).all()
    assert list(estimated["n"]) == [16, 16, 8, 16]
    assert (estimated["ci_low"] <= estimated["estimate"]).all()
    assert (estimated["estimate"] <= estimated["ci_high"]).all()
