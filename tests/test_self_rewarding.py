"""Experiment 4 (self-rewarding with DPO): its arms, the paired changes and the reward-hacking verdict on known
numbers, and its smoke through the script's entry point (every arm x 3 seeds, a resume without new work)."""
import json
import shutil

import pandas as pd
import pytest

from conftest import assert_rerun_writes_nothing, experiment_script, smoke_argv
from workbench.self_rewarding import (SELF_REWARDING_ARMS, changes, reward_hacking_verdict, self_rewarding_configs,
                                      with_judge_columns)
from workbench.store import Run



def test_arms_pick_pairs_by_their_grader_and_train_with_dpo():
    configs = self_rewarding_configs("ROOT", seed=1)
    assert list(configs) == list(SELF_REWARDING_ARMS)
    assert {arm: c.select.pairs.by for arm, c in configs.items()} == {
        "verifier": "verifier", "self_judge": "judge", "consistency": "consistency", "instructions_self_judge": "judge"}
    assert all(c.train.method == "dpo" and c.start_from == "last" and c.generations == 3 for c in configs.values())
    assert "verifier" in configs["self_judge"].graders and configs["instructions_self_judge"].graders == ["judge"]
    assert configs["instructions_self_judge"].task == "instructions"


def _frame(own_rise: float, accuracy_rise: float) -> pd.DataFrame:
    rows = []
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        for generation in (0, 1):
            rows.append({"seed": seed, "arm": "self_judge", "generation": generation, "auc_judge": 0.5,
                         "own_score": 0.4 + generation * (own_rise + noise), "anchor_score": 0.4,
                         "accuracy_lenient": 0.3 + generation * (accuracy_rise + noise), "eval_answer_tokens": 20.0})
    return with_judge_columns(pd.DataFrame(rows))


def test_the_verdict_says_reward_hacking_only_when_scores_rise_and_accuracy_does_not():
    hacked = changes(_frame(own_rise=0.2, accuracy_rise=-0.05), ["own_score", "anchor_score", "accuracy_lenient",
                                                                  "eval_answer_tokens"])
    row = hacked.set_index("metric").loc["own_score"]
    assert row["change_mean"] == pytest.approx(0.2) and row["clear"]
    text = reward_hacking_verdict(hacked, "self_judge")
    assert text.startswith("self_judge shows reward hacking") and "held-out lenient accuracy falls" in text
    honest = changes(_frame(own_rise=0.2, accuracy_rise=0.2), ["own_score", "accuracy_lenient"])
    assert "does not show reward hacking" in reward_hacking_verdict(honest, "self_judge")
    assert _frame(0.1, 0.1)["judge_auc"].eq(0.5).all()


@pytest.mark.real_model
def test_self_rewarding_smoke_every_arm_three_seeds_and_a_resume(tiny_model_dir, tmp_path):
    script = experiment_script("self_rewarding")
    runs, out, argv = smoke_argv(tmp_path, tiny_model_dir)
    try:
        assert script.main(argv) == 0
        long = pd.read_csv(out / "self_rewarding.csv")
        assert sorted(long["seed"].unique()) == [0, 1, 2] and set(long["arm"]) == set(SELF_REWARDING_ARMS)
        assert {"own_score", "anchor_score", "eval_answer_tokens", "pairs", "judge_auc"} <= set(long.columns)
        written = json.loads((out / "self_rewarding.json").read_text())
        assert set(written["verdicts"]) == {"self_judge", "consistency", "instructions_self_judge"}
        assert "±" in (out / "self_rewarding.md").read_text()
        for seed in (0, 1, 2):  # the arithmetic arms share generation 0's evaluation; instructions has its own
            for arm in ("verifier", "self_judge", "consistency"):
                assert Run(runs / f"seed-{seed}" / arm).metrics(0)["eval_shared_from"].endswith("_base_eval")
            assert "eval_shared_from" not in Run(runs / f"seed-{seed}" / "instructions_self_judge").metrics(0)
            assert (runs / f"seed-{seed}" / "self_judge" / "gen-000" / "pairs.parquet").exists()
        assert_rerun_writes_nothing(script.main, argv, runs)  # resumes: no new part, no ledger line
        assert pd.read_csv(out / "self_rewarding.csv").equals(long)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
