"""The experiments' seeds machinery (summary across seeds, the label-free headline, --seeds), the loop's
self-graders and their audits against the verifier, and experiment 3's smoke through its Python entry point:
every arm x 3 seeds, the tables it writes, and a rerun that resumes without new work."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import assert_rerun_writes_nothing, experiment_script, smoke_argv
from workbench.errors import InputDataError
from workbench.experiments import (LABEL_FREE_ARMS, label_free_configs, label_free_headline, mean_ci,
                                   summarize_seeds)
from workbench.loop import history, run
from workbench.loop_config import LoopConfig
from workbench.store import Run



def test_mean_ci_is_the_t_interval_and_summary_has_one_row_per_arm_and_generation():
    mean, half = mean_ci([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3))
    assert np.isnan(mean_ci([0.4])[1]) and mean_ci([0.4])[0] == 0.4  # one seed: no spread to measure
    assert all(np.isnan(mean_ci([None, float("nan")])))
    frame = pd.DataFrame({"seed": [0, 1, 0, 1, 0, 1], "arm": ["a", "a", "a", "a", "b", "b"],
                          "generation": [0, 0, 1, 1, 0, 0], "acc": [0.1, 0.3, 0.5, 0.7, 0.2, None],
                          "flag": [True, False, True, True, False, False]})
    summary = summarize_seeds(frame, ["acc", "flag", "absent"])
    assert summary[["arm", "generation", "seeds"]].values.tolist() == [["a", 0, 2], ["a", 1, 2], ["b", 0, 2]]
    assert summary["acc_mean"].tolist() == pytest.approx([0.2, 0.6, 0.2])
    assert summary.loc[0, "acc_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([0.1, 0.3], ddof=1) / np.sqrt(2))
    assert np.isnan(summary.loc[2, "acc_ci95"])  # one seed measured it
    assert summary["flag_mean"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert "absent_mean" not in summary


def test_headline_is_the_paired_ratio_and_says_when_it_means_nothing():
    rows = []
    for seed, (ver, con) in enumerate([(0.10, 0.05), (0.12, 0.06), (0.08, 0.02)]):
        for arm, gain in (("verifier", ver), ("consistency", con)):
            rows += [{"seed": seed, "arm": arm, "generation": 0, "accuracy_lenient": 0.40},
                     {"seed": seed, "arm": arm, "generation": 1, "accuracy_lenient": 0.40 + gain}]
    result = label_free_headline(pd.DataFrame(rows))
    assert result["meaningful"] and result["note"] == ""
    assert result["reference_gain"]["per_seed"] == pytest.approx([10, 12, 8])
    consistency = next(row for row in result["arms"] if row["arm"] == "consistency")
    assert consistency["recovered_per_seed"] == pytest.approx([0.5, 0.5, 0.25])
    assert consistency["recovered_mean"] == pytest.approx(np.mean([0.5, 0.5, 0.25]))
    assert consistency["recovered_ci95"] == pytest.approx(mean_ci([0.5, 0.5, 0.25])[1])
    assert consistency["labels"] == "none" and consistency["gain_mean"] == pytest.approx(13 / 3)
    small = pd.DataFrame(rows).assign(accuracy_lenient=lambda f: np.where(f["generation"] == 1, 0.41, 0.40))
    flat = label_free_headline(small)
    assert not flat["meaningful"] and "too small" in flat["note"] and "below 2 points" in flat["note"]


def test_seeds_arguments(tmp_path):
    common = experiment_script("common")
    assert common.parse("x", []).seeds == [0, 1, 2]
    assert common.parse("x", ["--seeds", "3,5"]).seeds == [3, 5]
    assert common.parse("x", ["--seed", "4"]).seeds == [4]  # the old flag: one seed
    with pytest.raises(SystemExit):
        common.parse("x", ["--seeds", "1,1"])


def test_label_free_arms_and_the_panel_check():
    configs = label_free_configs("ROOT", seed=2)
    assert list(configs) == list(LABEL_FREE_ARMS)
    for arm, config in configs.items():
        assert "verifier" in config.graders and config.run == f"ROOT/{arm}" and config.seed == 2
        assert config.eval.heldout_problems == 191
    assert configs["panel"].graders[-1] == "panel" and configs["none"].select.graders() == []
    assert list(configs["verifier"].select.thresholds) == ["verifier"]
    LoopConfig(graders=["verifier", "consistency", "panel"])
    for graders in (["consistency", "panel", "verifier"], ["verifier", "panel", "judge"], ["verifier", "panel"]):
        with pytest.raises(InputDataError, match="'panel' combines"):
            LoopConfig(graders=graders)


def test_loop_audits_every_self_grader_against_the_verifier(tiny_model_dir, tmp_path):
    """consistency, pairwise, judge, certainty and panel in one generation on the tiny model: each gets an
    audit and an auc_<grader> column; the tiny model is never right, so the panel cannot fit and says so."""
    config = LoopConfig(run=str(tmp_path / "run"), model=str(tiny_model_dir), task_params={"n": 3, "digits": 1},
                        generations=1, generate={"n_per_prompt": 3, "max_new_tokens": 6},
                        graders=["verifier", "consistency", "pairwise", "judge", "certainty", "panel"],
                        select={"rank_by": "panel", "per_prompt_cap": 2}, train={"epochs": 1, "max_steps": 1},
                        eval={"heldout_problems": 4, "heldout_texts": 2, "diversity_prompts": 2, "diversity_tokens": 6})
    frame = run(config, say=lambda _: None)
    data = Run(config.run).metrics(0)["data"]
    assert set(data["audits"]) == {"consistency", "pairwise", "judge", "certainty", "panel"}
    assert all(audit["n"] == 9 for name, audit in data["audits"].items() if name != "panel")
    assert "not fitted" in data["audits"]["panel"]["message"] and data["accepted"] == 0
    assert {f"auc_{g}" for g in data["audits"]} | {"accepted_precision"} <= set(frame.columns)
    assert frame.equals(history(config.run))


@pytest.mark.real_model
def test_label_free_smoke_every_arm_three_seeds_and_a_resume(tiny_model_dir, tmp_path):
    # the tiny random model of SmolLM2's shape: every stage of 6 arms x 3 seeds in about a minute (on the
    # real model the smoke takes ~10 min on 2 cores; notebook 06 runs it on the real model, fewer arms)
    label_free = experiment_script("label_free")
    runs, out, argv = smoke_argv(tmp_path, tiny_model_dir)
    try:
        assert label_free.main(argv) == 0
        long = pd.read_csv(out / "label_free.csv")
        assert sorted(long["seed"].unique()) == [0, 1, 2]
        assert set(long["arm"]) == set(LABEL_FREE_ARMS) and sorted(long["generation"].unique()) == [0, 1]
        written = json.loads((out / "label_free.json").read_text())
        summary = pd.DataFrame(written["summary"])
        assert len(summary) == len(LABEL_FREE_ARMS) * 2 and (summary["seeds"] == 3).all()
        for metric in ("accuracy_lenient", "accuracy_strict", "accept_rate", "auc_consistency", "auc_judge"):
            assert {f"{metric}_mean", f"{metric}_ci95"} <= set(summary.columns)
        headline = written["headline"]
        assert {"reference_gain", "meaningful", "note", "arms"} <= set(headline)
        assert [row["arm"] for row in headline["arms"]] == list(LABEL_FREE_ARMS)
        assert all({"recovered_mean", "recovered_ci95", "gain_mean", "labels"} <= set(row) for row in headline["arms"])
        markdown = (out / "label_free.md").read_text()
        assert "<= 32 verifier labels" in markdown and "±" in markdown and "seeds 0, 1, 2" in markdown
        # generation 0 is evaluated once per seed and shared with every arm
        for seed in (0, 1, 2):
            for arm in LABEL_FREE_ARMS:
                metrics = Run(runs / f"seed-{seed}" / arm).metrics(0)
                assert metrics["eval_shared_from"].endswith(f"seed-{seed}/_base_eval")
                assert not (runs / f"seed-{seed}" / arm / "gen-000" / "eval").exists()
        # a rerun resumes: every table is read back, nothing new is written into the runs
        assert_rerun_writes_nothing(label_free.main, argv, runs)
        assert pd.read_csv(out / "label_free.csv").equals(long)
    finally:
        shutil.rmtree(runs, ignore_errors=True)  # 18 checkpoints of ~0.5 GB each
