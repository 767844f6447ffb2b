"""Preference learning: pairs from any grader (ties, NaN, margins, human labels), DPO through TRL (full and
LoRA, checkpoint, events), the loop's self-rewarding mode with its anchor set and flags, and bad input."""
import json

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InputDataError
from workbench.loop import LoopConfig, history, run
from workbench.metrics.collapse import collapse_flags
from workbench.models import load_model
from workbench.pairs import trl_records
from workbench.select import pairs
from workbench.store import Run
from workbench.train import finetune


def graded_frame():
    """Four prompts, three answers each: a clean best/worst, a tie, a NaN, a gap below a margin of 0.3."""
    rows = []
    scores = {"p0": [0.9, 0.1, 0.5], "p1": [0.4, 0.4, 0.4], "p2": [0.8, np.nan, np.nan], "p3": [0.6, 0.5, 0.55]}
    for prompt_id, values in scores.items():
        for k, value in enumerate(values):
            rows.append({"sample_id": f"{prompt_id}-{k}", "prompt_id": prompt_id, "prompt": f"question {prompt_id}",
                         "completion": f"answer {k} to {prompt_id}", "chat": True, "task": "arithmetic",
                         "score__judge": value})
    return pd.DataFrame(rows)


def test_pairs_best_vs_worst_and_the_reasons_for_none():
    found = pairs(graded_frame(), by="judge", margin=0.3)
    assert found.frame[["prompt_id", "chosen", "rejected"]].values.tolist() == [
        ["p0", "answer 0 to p0", "answer 1 to p0"]]
    assert found.frame["margin"].iloc[0] == pytest.approx(0.8)
    assert found.no_pair == {"one scored sample": 1, "all tied": 1, "below margin": 1}
    assert "1 preference pair(s) by judge from 4 prompt(s)" in found.message and "1 all tied" in found.message
    # without a margin, p3's 0.1 gap forms a pair; ties and NaN never do
    loose = pairs(graded_frame(), by="judge")
    assert sorted(loose.frame["prompt_id"]) == ["p0", "p3"] and loose.no_pair["all tied"] == 1
    # every qualifying pair, widest first, capped per prompt
    many = pairs(graded_frame(), by="judge", per_prompt=2)
    p0 = many.frame[many.frame["prompt_id"] == "p0"]
    assert p0["margin"].round(3).tolist() == [0.8, 0.4] and len(many.frame) == 4


def test_human_labels_override_the_grader():
    labels = {"p1-2": "good", "p0-0": "exclude", "p2-1": "bad"}
    found = pairs(graded_frame(), by="judge", labels=labels).frame.set_index("prompt_id")
    assert found.loc["p1", "chosen"] == "answer 2 to p1" and found.loc["p1", "by_label"]  # a tie broken by a human
    assert found.loc["p0", "chosen"] == "answer 2 to p0"  # the excluded best answer is out
    assert found.loc["p2", "rejected"] == "answer 1 to p2"  # a NaN score with a 'bad' label ranks last


def test_pairs_refuse_a_grader_that_did_not_score():
    with pytest.raises(InputDataError, match="score__verifier"):
        pairs(graded_frame(), by="verifier")


def test_trl_format_is_conversational_for_chat_and_checks_columns():
    frame = pairs(graded_frame(), by="judge").frame
    record = trl_records(frame)[0]
    assert record["prompt"] == [{"role": "user", "content": "question p0"}]
    assert record["chosen"] == [{"role": "assistant", "content": "answer 0 to p0"}]
    dataset = pairs(graded_frame(), by="judge").to_dataset()
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == 2
    with pytest.raises(InputDataError, match=r"lack column\(s\) \['chosen', 'rejected'\]"):
        finetune(pd.DataFrame({"prompt": ["q"], "answer": ["a"]}), "unused", method="dpo")


def test_training_needs_local_weights():
    with pytest.raises(InputDataError, match="needs local weights"):
        finetune(pairs(graded_frame(), by="judge").frame, "openai:some-model@http://127.0.0.1:9", method="dpo")


def test_dpo_full_and_lora_on_the_tiny_model(tiny_model_dir, tmp_path):
    frame = pairs(graded_frame(), by="judge", per_prompt=3).frame
    events = []
    result = finetune(frame, str(tiny_model_dir), method="dpo", beta=0.1, pairs_per_step=2, max_steps=2,
                      learning_rate=1e-3, out_dir=tmp_path / "full", callback=events.append)
    assert [e["step"] for e in events] == [1, 2]
    assert {"loss", "reward_margin", "reward_chosen", "reward_rejected", "tokens_per_s"} <= set(events[0])
    assert events[0]["loss"] == pytest.approx(np.log(2), abs=1e-3)  # policy == reference at the first step
    assert events[-1]["reward_margin"] != 0  # the second step sees a trained policy
    stats = json.loads((result.checkpoint / "train_stats.json").read_text())
    assert stats["method"] == "dpo" and stats["trainer"] == "trl.DPOTrainer" and stats["real_tokens"] > 0
    assert load_model(str(result.checkpoint)).model is not None  # a plain model folder
    lora = finetune(frame, str(tiny_model_dir), method="dpo", lora=True, pairs_per_step=2, max_steps=1,
                    out_dir=tmp_path / "lora")
    assert lora.stats["lora"] and not list(lora.checkpoint.glob("adapter_*"))  # merged at save


def test_collapse_monitor_flags_length_drift_and_inflation():
    base = {"heldout_perplexity": 10.0, "diversity_distinct_2": 0.5, "eval_answer_tokens": 20.0, "anchor_score": 0.5}
    quiet = collapse_flags([base, {**base, "eval_answer_tokens": 25.0, "anchor_score": 0.55}])
    assert not quiet["collapsed"] and quiet["length_rise"] == pytest.approx(0.25)
    hacked = collapse_flags([base, {**base, "eval_answer_tokens": 40.0, "anchor_score": 0.8}])
    assert hacked["collapsed"] and len(hacked["flags"]) == 2 and "inflation" in hacked["flags"][1]


def test_dpo_needs_pairs_in_the_loop_config(tiny_model_dir, tmp_path):
    with pytest.raises(InputDataError, match="select.pairs is not set"):
        LoopConfig.from_dict({"run": str(tmp_path / "r"), "train": {"method": "dpo"}})


def loop_values(model_dir, run_dir, by="judge", margin=0.0, generations=1):
    return dict(run=str(run_dir), model=str(model_dir), task="arithmetic", task_params={"n": 4}, generations=generations,
                generate={"n_per_prompt": 3, "max_new_tokens": 8}, graders=["verifier", by] if by != "verifier"
                else ["verifier"], select={"pairs": {"by": by, "margin": margin}},
                train={"method": "dpo", "pairs_per_step": 2, "max_steps": 2},
                eval={"heldout_problems": 4, "heldout_texts": 2, "diversity_prompts": 2, "diversity_tokens": 8,
                      "anchor_prompts": 2})


def test_self_rewarding_loop_records_pairs_anchor_and_length(real_model_dir, tmp_path):
    """Two generations on the real model: the model judges its own answers, pairs best vs worst, DPO-trains."""
    frame = run(LoopConfig.from_dict(loop_values(real_model_dir, tmp_path / "run")), say=lambda _: None)
    loop_run = Run(tmp_path / "run")
    metrics = loop_run.metrics(0)
    stored = loop_run.read_frame(0, "pairs")
    assert metrics["data"]["pairs"]["pairs"] == len(stored) and set(stored.columns) >= {"prompt", "chosen", "rejected"}
    assert sum(metrics["data"]["pairs"]["no_pair"].values()) + stored["prompt_id"].nunique() == 4
    anchor = loop_run.read_frame(0, "anchor")
    assert anchor["prompt_id"].nunique() == 2 and len(anchor) == 6
    assert metrics["anchor"]["answers"] == 6 and loop_run.metrics(1)["anchor"]["answers"] == 6  # re-scored by gen 1
    assert {"anchor_score", "own_score", "mean_answer_tokens", "eval_answer_tokens", "pairs"} <= set(frame.columns)
    assert frame["anchor_score"].notna().all()
    collapse = loop_run.metrics(1)["collapse"]
    assert "length_rise" in collapse and "score_inflation" in collapse
    train = metrics["data"]["train"]
    assert train["method"] == "dpo" and (train["steps"] or train["skipped"])
    assert frame.equals(history(tmp_path / "run"))


def test_no_pair_keeps_the_model_and_says_why(tiny_model_dir, tmp_path):
    # the verifier scores 0/1 and a margin above 1 leaves no pair
    run(LoopConfig.from_dict(loop_values(tiny_model_dir, tmp_path / "run", by="verifier", margin=1.5)),
        say=lambda _: None)
    metrics = Run(tmp_path / "run").metrics(0)["data"]
    assert metrics["pairs"]["pairs"] == 0 and metrics["train"]["skipped"].startswith("no preference pair")
    assert (tmp_path / "run" / "gen-001" / "checkpoint" / "config.json").exists()


def test_cli_dpo_on_an_exported_pairs_file(tiny_model_dir, tmp_path):
    """`workbench finetune --method dpo` reads TRL's conversational format (what `workbench export` writes)."""
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    pd.DataFrame(trl_records(pairs(graded_frame(), by="judge").frame)).to_json(data, orient="records", lines=True)
    command = [sys.executable, "-m", "workbench", "finetune", "--data", str(data), "--model", str(tiny_model_dir),
               "--method", "dpo", "--out", str(tmp_path / "out"), "--set", "max_steps=1", "pairs_per_step=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reward margin" in done.stdout and (tmp_path / "out" / "checkpoint" / "config.json").exists()
    pd.DataFrame({"prompt": ["q"], "chosen": ["a"]}).to_json(data, orient="records", lines=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "lack column(s) ['rejected']" in done.stderr


def test_training_panel_plots_dpo_rewards_live(tiny_model_dir, tmp_path):
    from workbench.training_panel import TrainingPanel

    panel = TrainingPanel(samples=graded_frame(), model=str(tiny_model_dir), out_dir=tmp_path,
                          train={"method": "dpo", "pairs_per_step": 2, "max_steps": 2, "learning_rate": 1e-3},
                          pairs={"by": "judge"},
                          eval={"heldout_problems": 2, "heldout_texts": 2, "diversity_prompts": 2, "diversity_tokens": 4})
    assert len(panel.selected()) == 2  # p0 and p3 form pairs
    panel.widget
    panel._ui["button"].click()
    assert "Fine-tuned on 2 preference pairs" in panel.message, panel.message
    traces = {t.name: t for t in panel._ui["loss"].data}
    assert set(traces) == {"loss", "reward margin", "chosen reward", "rejected reward"}
    assert list(traces["reward margin"].y) == pytest.approx(panel.result.history["reward_margin"].tolist())
    assert traces["reward margin"].yaxis == "y2" and traces["loss"].yaxis in (None, "y")
