"""Graders on the tiny model, the real model and hand-made samples; grade() storage and reuse."""
import numpy as np
import pandas as pd
import pytest

from workbench import Run
from workbench.errors import InputDataError
from workbench.sampling import generate
from workbench.graders import (Heuristics, Novelty, Perplexity, Realism, RewardModel, SelfJudge, Verifier, grade,
                               parse_final_number)
from workbench.tasks import get_task


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", 42.0), ("12 + 7 = 19", 19.0), ("It is -5", -5.0), ("1,234", 1234.0),
    ("\u22123", -3.0), ("3.5 apples", 3.5), ("x2 is a name, no number", None), ("no digits", None),
    ("First 3, then finally 8.", 8.0),
])
def test_parse_final_number(text, expected):
    assert parse_final_number(text) == expected


def test_verifier_and_strict():
    frame = pd.DataFrame({"prompt": ["q"] * 5, "completion": ["19", "The sum is 19.", "18", "nineteen", "19"],
                          "reference": ["19", "19", "19", "19", None]})
    assert list(Verifier().score(frame)[:4]) == [1.0, 1.0, 0.0, 0.0] and np.isnan(Verifier().score(frame)[4])
    assert list(Verifier(strict=True).score(frame)[:4]) == [1.0, 0.0, 0.0, 0.0]
    custom = Verifier(name="has_nine", check=lambda p, c, r: "9" in c)
    assert list(custom.score(frame)[:4]) == [1.0, 1.0, 0.0, 0.0]


def test_heuristics():
    frame = pd.DataFrame({"completion": ["A normal helpful answer with several words.", "I'm sorry, I cannot do that.",
                                         "again again again again again again again", "", "ok\x00\x01 text here"]})
    scores = Heuristics().score(frame)
    assert scores[0] == pytest.approx(1.0) and scores[1] == 0.0 and scores[3] == 0.0
    assert 0 < scores[2] < 0.5 and 0 < scores[4] < 1


@pytest.fixture(scope="module")
def tiny_samples(tiny):
    return generate(get_task("arithmetic", n=6), model=tiny, max_new_tokens=8, batch_size=4)


def test_judge_on_tiny_matches_a_direct_forward(tiny, tiny_samples):
    import torch

    judge = SelfJudge(model=tiny)
    scores = judge.score(tiny_samples)
    assert scores.between(0, 1).all() and scores.notna().all()
    yes, no = judge.candidate_ids()
    for i in (0, 3):  # independent computation: transformers forward on the full prompt
        ids = judge.prompt_ids(tiny_samples["prompt"][i], tiny_samples["completion"][i])
        with torch.no_grad():
            logits = tiny.model(torch.tensor([ids])).logits[0, -1]
        expected = torch.sigmoid(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0)).item()
        assert scores[i] == pytest.approx(expected, abs=1e-4)
    scale = SelfJudge(model=tiny, mode="scale", low=1, high=5).score(tiny_samples)
    assert scale.between(0, 1).all()
    with pytest.raises(InputDataError, match="single digits"):
        SelfJudge(model=tiny, mode="scale", low=1, high=10)


def test_perplexity_matches_a_direct_forward(tiny, tiny_samples):
    import torch

    from workbench.sampling import encode_prompt

    scores = Perplexity(model=tiny).score(tiny_samples)
    prompt_ids = encode_prompt(tiny.tokenizer, tiny_samples["prompt"][1], True, None)
    completion_ids = tiny.tokenizer.encode(tiny_samples["completion"][1], add_special_tokens=False)
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(ids).logits[0, len(prompt_ids) - 1:-1], -1)
    expected = torch.exp(logp.gather(-1, torch.tensor(completion_ids)[:, None]).mean()).item()
    assert scores[1] == pytest.approx(expected, rel=1e-4)


def test_reward_model_tiny_random(tmp_path, real_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(real_model_dir).save_pretrained(tmp_path / "rm")
    frame = pd.DataFrame({"prompt": ["a", "b", "c"], "completion": ["x", "a longer answer", "z"]})
    scores = RewardModel(str(tmp_path / "rm"), batch_size=2).score(frame)
    assert scores.between(0, 1).all() and scores.nunique() == 3
    with pytest.raises(InputDataError, match="reward model"):
        RewardModel(str(tmp_path / "missing")).score(frame)


def test_embedding_graders():
    real = list(get_task("corpus", n=40)["reference"])
    synthetic = [f"answer {i}: yes yes yes the the" for i in range(40)]
    realism = Realism(real, synthetic)
    assert realism.train_auc_ > 0.9
    frame = pd.DataFrame({"completion": [real[0], synthetic[0]]})
    scores = realism.score(frame)
    assert scores[0] > 0.5 > scores[1]
    novelty = Novelty(pool=[real[0]]).score(frame)
    assert novelty[0] == pytest.approx(0.0, abs=1e-5) and novelty[1] > 0.3
    assert (Novelty().score(frame) == 1.0).all()
    with pytest.raises(InputDataError, match="at least 2"):
        Realism(real[:1], synthetic)


def test_grade_stores_and_reuses(tiny, tiny_samples, tmp_path):
    run = Run(tmp_path / "r")
    calls = []

    class Counting(Verifier):
        def score(self, samples):
            calls.append(len(samples))
            return super().score(samples)

    graded = grade(tiny_samples.head(4), [Counting(), Heuristics()], run=run)
    assert {"score__verifier", "score__heuristics"} <= set(graded.columns)
    regraded = grade(tiny_samples, [Counting(), Heuristics()], run=run)
    assert calls == [4, 2]  # only the two new rows were scored
    pd.testing.assert_series_equal(regraded["score__verifier"].head(4), graded["score__verifier"])
    assert len(run.read("scores/verifier")) == 6
    with pytest.raises(InputDataError, match="share a name"):
        grade(tiny_samples, [Verifier(), Verifier()])
    with pytest.raises(InputDataError, match="needs columns"):
        grade(tiny_samples.drop(columns=["reference"]), [Verifier()])


def test_real_judge_and_perplexity(real):
    samples = pd.DataFrame({
        "prompt": ["What is 2 + 2?", "What is 2 + 2?", "Name the capital of France.", "Name the capital of France."],
        "completion": ["2 + 2 = 4.", "2 + 2 = 17, because two is a fish.", "The capital of France is Paris.",
                       "Banana."], "chat": [True] * 4})
    judge = SelfJudge(model=real).score(samples)
    perplexity = Perplexity(model=real).score(samples)
    assert judge.between(0, 1).all() and perplexity.between(0, 1).all()
    # the real model finds the sensible answers more likely than the nonsense ones
    assert perplexity[0] > perplexity[1] and perplexity[2] > perplexity[3]


def test_fitted_results_do_not_count_as_grader_settings(tmp_path):
    """A rerun builds its grader again; a fitted number that differs in the last digits (Realism's
    cross-validated AUC did, between two processes) must not make the run refuse to resume."""
    import pandas as pd

    from workbench.graders import Heuristics, grade
    from workbench.graders.base import grader_config
    from workbench.store import Run

    first, second = Heuristics(), Heuristics()
    first.train_auc_, second.train_auc_ = 0.98963, 0.98859
    assert grader_config(first) == grader_config(second) and "train_auc_" not in grader_config(first)
    samples = pd.DataFrame({"sample_id": ["a", "b"], "prompt": ["p", "q"], "completion": ["An answer.", "Another."]})
    run = Run(tmp_path / "run")
    grade(samples, [first], run=run)
    assert grade(samples, [second], run=run)["score__heuristics"].notna().all()
