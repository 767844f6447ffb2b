"""Issue 15: collapse measured properly. The tail metrics and their noise floor, the monitor that fires on
tails but not on noise, detector-weighted resampling (weights, errors, nothing written on bad input), the
realism detector cross-fitted in the loop, experiment 2's smoke (six arms x 3 seeds, a resume) on a tiny model,
and the tail metrics of the real embedded model."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InputDataError
from workbench.metrics.collapse import (bootstrap_noise, collapse_flags, passage_perplexities, pooled_perplexity,
                                        rare_token_prob, tail_report, unigram_entropy, vocab_coverage)
from workbench.mix import detector_resample, detector_weights

from conftest import assert_rerun_writes_nothing, experiment_script, smoke_argv


def _scored(seed=0, passages=50, tokens=20, shift=0.0):
    """Fake held-out log-probs: (token ids, log p) per passage; ids 0..9 are frequent, 100+ rare (~20% of the
    occurrences, so the bottom decile of corpus frequency is exactly the rare ones)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(passages):
        ids = np.where(rng.random(tokens) < 0.8, rng.integers(0, 10, tokens), rng.integers(100, 200, tokens))
        logprobs = np.where(ids < 10, -1.0, -6.0) + rng.normal(0, 0.3, tokens) - shift
        out.append((ids, logprobs))
    return out


FREQUENCIES = Counter({i: 1000 for i in range(10)} | {i: 1 for i in range(100, 200)})


def test_tail_metrics_are_what_their_definitions_say():
    scored = _scored()
    ppl = passage_perplexities(scored)
    assert len(ppl) == 50 and np.allclose(ppl, [np.exp(-lp.mean()) for _, lp in scored])
    total = np.concatenate([lp for _, lp in scored])
    assert pooled_perplexity(scored) == pytest.approx(np.exp(-total.mean()))
    # rare = the bottom decile of corpus frequency: here exactly the ids >= 100, with p ~ e^-6
    ids = np.concatenate([t for t, _ in scored])
    assert rare_token_prob(scored, FREQUENCIES) == pytest.approx(np.exp(total[ids >= 100]).mean())
    assert rare_token_prob(scored, FREQUENCIES) < 0.01 < np.exp(total).mean()
    # vocabulary coverage compares equal word counts; unigram entropy in bits
    assert vocab_coverage(["a b c d"], ["a b c d e f g h"]) == pytest.approx(1.0)  # 4 words each: 4 vs 4 types
    assert vocab_coverage(["a a a a"], ["a b c d"]) == pytest.approx(0.25)
    assert unigram_entropy(["a b a b"]) == pytest.approx(1.0) and unigram_entropy(["a b c d"]) == pytest.approx(2.0)
    report = tail_report(scored, FREQUENCIES, ["the cat sat", "a dog ran"], ["the cat sat", "the cat sat"])
    assert report["heldout_ppl_p99"] >= report["heldout_ppl_p90"] >= np.median(ppl)
    assert report["vocab_coverage"] == pytest.approx(6 / 3) and report["unigram_entropy_real"] == pytest.approx(np.log2(3))


def test_collapse_monitor_fires_on_the_tails_but_not_on_noise():
    base_scored, worse_scored = _scored(0), _scored(0, shift=0.5)  # every token 0.5 nats less likely
    free, real = ["w%d x%d" % (i, i) for i in range(30)], ["w%d y%d" % (i, i) for i in range(30)]
    gen0 = {**tail_report(base_scored, FREQUENCIES, free, real), "heldout_perplexity": pooled_perplexity(base_scored)}
    gen1 = {**tail_report(worse_scored, FREQUENCIES, free, real), "heldout_perplexity": pooled_perplexity(worse_scored)}
    flags = collapse_flags([gen0, gen1], max_perplexity_rise=1.0, max_tail_rise=0.25, max_rare_drop=0.25)
    assert flags["collapsed"] and flags["tail_rise"] == pytest.approx(np.exp(0.5) - 1)
    assert any("90th percentile" in f for f in flags["flags"]) and any("rare tokens" in f for f in flags["flags"])
    # generation 0's bootstrap noise floor: a move smaller than the noise does not fire, even above the limit
    noise = bootstrap_noise(base_scored, FREQUENCIES, free, real, repeats=100)
    assert {"heldout_ppl_p90", "rare_token_prob", "vocab_coverage", "diversity_distinct_2"} <= set(noise)
    assert all(0 <= value < 1 for value in noise.values()) and noise["heldout_ppl_p90"] > 0
    wobble = {**gen0, "heldout_ppl_p90": gen0["heldout_ppl_p90"] * (1 + noise["heldout_ppl_p90"] / 2)}
    quiet = collapse_flags([{**gen0, "noise": noise}, wobble], max_tail_rise=0.0)
    assert not quiet["collapsed"] and quiet["noise_floor"]["heldout_ppl_p90"] == noise["heldout_ppl_p90"]
    assert collapse_flags([gen0, wobble], max_tail_rise=0.0)["collapsed"]  # without the floor it fires
    assert collapse_flags([{**gen0, "noise": noise}, gen1], max_perplexity_rise=1.0)["collapsed"]  # real moves do


def test_detector_weights_and_their_errors():
    p = np.array([0.1, 0.5, 0.9])
    odds = detector_weights(p)
    assert odds == pytest.approx(np.array([1 / 9, 1, 9]) / (1 / 9 + 1 + 9))
    assert detector_weights(p, "prob") == pytest.approx(p / p.sum())
    assert detector_weights(p, temperature=1e6) == pytest.approx(np.full(3, 1 / 3), abs=1e-4)  # hot: uniform
    assert detector_weights(p, temperature=0.5) == pytest.approx(np.array([1 / 81, 1, 81]) / (1 / 81 + 1 + 81))
    assert detector_weights([0.0, 1.0])[1] == pytest.approx(1.0)  # p = 1 is capped, not a division by zero
    for bad, match in [([np.nan, np.nan], "no finite P\\(real\\)"), ([0.2, np.nan], "1 of 2 rows have no P"),
                       ([0.0, 0.0], "all zero"), ([0.5, 1.5], "must lie in \\[0, 1\\]"), ([], "no finite")]:
        with pytest.raises(InputDataError, match=match):
            detector_weights(bad)
    with pytest.raises(InputDataError, match="weight"):
        detector_weights(p, "softmax")
    with pytest.raises(InputDataError, match="temperature"):
        detector_weights(p, temperature=0)
    # the redraw keeps the row count (the same compute), favours likely-human rows, and is seeded
    frame = pd.DataFrame({"prompt": list("abcdefghij"), "completion": list("ABCDEFGHIJ")})
    p_real = np.r_[np.full(9, 0.05), 0.95]
    drawn = detector_resample(frame, p_real, seed=3)
    assert len(drawn) == 10 and (drawn["completion"] == "J").sum() >= 7
    assert drawn.equals(detector_resample(frame, p_real, seed=3))
    assert drawn["detector_weight"].max() == pytest.approx(10 * detector_weights(p_real).max())


def test_detector_mix_needs_the_realism_grader_and_writes_nothing_on_bad_scores(tmp_path):
    from workbench.loop import LoopConfig, Step, mix_stage
    from workbench.store import Run

    with pytest.raises(InputDataError, match="(?s)realism.*Add 'realism' to graders"):
        LoopConfig.from_dict({"task": "corpus", "graders": ["heuristics"], "select": {},
                              "mix": {"policy": "replace", "resample_by": "realism"}})
    with pytest.raises(InputDataError, match="not a detector"):
        LoopConfig.from_dict({"graders": ["judge"], "select": {}, "mix": {"policy": "replace", "resample_by": "judge"}})
    with pytest.raises(InputDataError, match="unknown key"):
        LoopConfig.from_dict({"mix": {"policy": "replace", "resample_by": "realism", "beta": 1}})
    config = LoopConfig.from_dict({"run": str(tmp_path / "run"), "task": "corpus", "graders": ["heuristics", "realism"],
                                   "select": {},
                                   "mix": {"policy": {"keep_real": 0.1}, "resample_by": "realism", "weight": "prob",
                                           "temperature": 2.0}})
    assert config.mix.spec == {"keep_real": 0.1} and config.mix.weight == "prob" and config.mix.temperature == 2.0
    assert config.to_record()["mix"] == {"policy": {"keep_real": 0.1}, "resample_by": "realism", "weight": "prob",
                                         "temperature": 2.0}
    run = Run(tmp_path / "run")
    step = Step(config, run, 0, say=lambda _: None)
    rows = pd.DataFrame({"prompt": ["p1", "p2"], "completion": ["c1", "c2"], "chat": False, "finish_reason": "length"})
    for bad, match in [(rows, "needs realism scores"), (rows.assign(score__realism=np.nan), "no finite P")]:
        with pytest.raises(InputDataError, match=match):
            mix_stage(step, bad, None)
        assert run.read_frame(0, "train_accepted") is None and run.read_frame(0, "train_set") is None
    training_set, data = mix_stage(step, rows.assign(score__realism=[0.2, 0.8]), None)
    assert data["train_set"]["detector"]["weight"] == "prob" and len(run.read_frame(0, "train_accepted")) == 2


def test_realism_detector_is_cross_fitted_on_the_samples_it_scores():
    from workbench.graders import Realism

    rng = np.random.default_rng(0)
    real = [f"The {w} statement evaluates the expression and binds the result to the {v} name in the module."
            for w, v in zip(rng.permutation(["assert", "return", "import", "global", "yield", "raise"] * 5),
                            rng.permutation(["local", "outer", "target", "given", "first", "same"] * 5))]
    synthetic = pd.DataFrame({"completion": ["lol lol lol !!! buy now cheap pills"] * 10 + [real[0]] * 2})
    detector = Realism(real)
    scores = detector.score(synthetic)
    assert len(scores) == 12 and scores.between(0, 1).all()
    assert scores.iloc[:10].max() < 0.5 < scores.iloc[10:].min()  # spam looks synthetic, a copy of real text real
    assert detector.train_auc_ > 0.7 and detector.n_synthetic == 12
    with pytest.raises(InputDataError, match="at least 2 real"):
        Realism(["one"])


@pytest.mark.real_model
def test_collapse_smoke_six_arms_three_seeds_and_a_resume(tiny_model_dir, tmp_path):
    from workbench.model_collapse import COLLAPSE_ARMS
    from workbench.store import Run

    collapse = experiment_script("collapse")
    runs, out, argv = smoke_argv(tmp_path, tiny_model_dir)
    try:
        assert collapse.main(argv) == 0
        long = pd.read_csv(out / "collapse.csv")
        assert sorted(long["seed"].unique()) == [0, 1, 2] and set(long["arm"]) == set(COLLAPSE_ARMS)
        for column in ("heldout_ppl_p90", "heldout_ppl_p99", "rare_token_prob", "vocab_coverage", "unigram_entropy"):
            assert long[column].notna().all(), column
        assert (long["heldout_ppl_p99"] >= long["heldout_ppl_p90"]).all()
        assert long.loc[long["arm"] == "detector_replace_temp_0.7", "detector_auc_realism"].dropna().between(0, 1).all()
        written = json.loads((out / "collapse.json").read_text())
        summary = pd.DataFrame(written["summary"])
        assert len(summary) == len(COLLAPSE_ARMS) * 2 and (summary["seeds"] == 3).all()
        assert {"heldout_ppl_p90_mean", "heldout_ppl_p90_ci95", "rare_token_prob_ci95"} <= set(summary.columns)
        assert set(written["verdicts"]) == set(COLLAPSE_ARMS)
        assert {row["arm"] for row in written["versus"]} == set(COLLAPSE_ARMS) - {"replace"}
        markdown = (out / "collapse.md").read_text()
        assert "larger than the noise" in markdown and "against replace" in markdown and "±" in markdown
        for seed in (0, 1, 2):
            detector = Run(runs / f"seed-{seed}" / "detector_replace_temp_0.7").metrics(0)["data"]
            assert detector["train_set"]["detector"]["by"] == "realism" and "realism" in detector["mean_scores"]
            # every arm samples the way its decoding says
            samples = Run(runs / f"seed-{seed}" / "replace_temp_0.7").read("samples", 0)
            assert (samples["temperature"] == 0.7).all()
            # generation 0 is evaluated once per seed; its per-passage perplexities are found through the share
            from workbench.model_collapse import passage_perplexities

            assert len(passage_perplexities(Run(runs / f"seed-{seed}" / "accumulate"), 0)) == 6
            assert len(passage_perplexities(Run(runs / f"seed-{seed}" / "accumulate"), 1)) == 6
        assert_rerun_writes_nothing(collapse.main, argv, runs)  # a rerun resumes: nothing new is written
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def test_toy_script_writes_its_table(tmp_path):
    toy = experiment_script("collapse_toy")
    assert toy.main(["--smoke", "--out", str(tmp_path), "--seeds", "0,1,2"]) == 0
    written = json.loads((tmp_path / "collapse_toy.json").read_text())
    assert written["disagreements"] == 0
    markdown = (tmp_path / "collapse_toy.md").read_text()
    assert "gaussian | replace | 10" in markdown and "regression | accumulate | 10" in markdown


@pytest.mark.real_model
def test_tail_metrics_of_the_real_model(real, tmp_path):
    from workbench.evaluate import evaluate
    from workbench.loop_config import EvalConfig
    from workbench.store import Run

    run = Run(tmp_path / "eval")
    metrics = evaluate(real, run, "corpus", EvalConfig(heldout_texts=24, heldout_tokens=32, diversity_prompts=6,
                                                       diversity_tokens=24))
    per_passage = run.read_frame(0, "heldout_perplexity")
    assert len(per_passage) == 24 and (per_passage["tokens"] == 31).all()
    assert metrics["heldout_ppl_p99"] >= metrics["heldout_ppl_p90"] >= per_passage["perplexity"].median()
    assert metrics["heldout_ppl_mean"] >= metrics["heldout_perplexity"]  # Jensen: mean of exp >= exp of mean
    # rare tokens (bottom decile of the training split's token counts) get a probability of their own
    from workbench.evaluate import _corpus_frequencies
    from workbench.metrics.collapse import heldout_logprobs
    from workbench.tasks import get_task

    held = get_task("corpus", n=24, split="heldout")
    scored = heldout_logprobs(real, (held["prompt"] + " " + held["reference"]).tolist(), max_length=32)
    everything = float(np.exp(np.concatenate([lp for _, lp in scored])).mean())
    assert metrics["rare_token_prob"] == pytest.approx(rare_token_prob(scored, _corpus_frequencies(real.tokenizer)),
                                                       rel=1e-4)
    assert 0 < metrics["rare_token_prob"] < 1 and metrics["rare_token_prob"] != pytest.approx(everything, rel=0.01)
    assert 0.3 < metrics["vocab_coverage"] < 1.5 and 3 < metrics["unigram_entropy"] < 10
    assert {"heldout_ppl_p90", "rare_token_prob", "vocab_coverage"} <= set(metrics["noise"])
