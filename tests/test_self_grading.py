"""Self-grading without labels: Consistency (self-consistency), Panel (graders combined), SelfCertainty
(the model's confidence), and the LoadedModel.token_statistics pass SelfCertainty reads."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from workbench import Run
from workbench.errors import InputDataError
from workbench.graders import Perplexity, Verifier, grade, grader_config
from workbench.graders.certainty import SelfCertainty
from workbench.graders.consistency import Consistency, normalised_text
from workbench.graders.panel import Panel
from workbench.store import TRAINED_PREFIX
from workbench.tasks import ANSWER_EXTRACTORS, answer_extractor


def _table(groups: dict[str, list[str]], task: str | None = "arithmetic") -> pd.DataFrame:
    """One row per completion: prompt_id, sample_id, prompt, completion (and task)."""
    rows = [{"prompt_id": pid, "sample_id": f"{pid}-{i}", "prompt": f"question {pid}", "completion": c}
            for pid, completions in groups.items() for i, c in enumerate(completions)]
    frame = pd.DataFrame(rows)
    if task is not None:
        frame["task"] = task
    return frame


# ------------------------------------------------------------------------------------------- Consistency

def test_task_registry_gives_arithmetic_its_final_number():
    assert "arithmetic" in ANSWER_EXTRACTORS and answer_extractor("instructions") is None
    assert answer_extractor("arithmetic")("So 3 + 4 = 7.") == 7.0


def test_consistency_shares_single_sample_prompt_and_majority():
    frame = _table({"a": ["7", "The answer is 7.", "3 + 4 = 7", "3"], "b": ["5"]})
    grader = Consistency()
    scores = grader.score(frame)
    assert scores[:4].tolist() == [0.75, 0.75, 0.75, 0.25]
    assert np.isnan(scores[4])  # one sample: agreement with itself says nothing
    assert grader.n_single_sample_prompts_ == 1 and "1 of 5 rows got NaN" in grader.message_
    assert "n_per_prompt" in grader.message_
    assert grader.majority_answer_ == {"a": 7.0, "b": 5.0}


def test_consistency_rows_without_an_answer_score_zero_and_count_in_k():
    frame = _table({"a": ["7", "no idea", "7", "   "], "b": ["none", "at all"]})
    grader = Consistency()
    assert grader.score(frame).tolist() == [0.5, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert grader.n_no_answer_ == 4 and "4 rows gave no answer" in grader.message_
    assert grader.majority_answer_ == {"a": 7.0}  # b has no answer at all


def test_consistency_text_and_callable_extractors():
    frame = _table({"q": ["Paris.", "paris", "  PARIS  ", "Lyon"]}, task=None)  # no task column needed
    assert Consistency(extractor="text").score(frame).tolist() == [0.75, 0.75, 0.75, 0.25]
    assert normalised_text("  Hello,   World! ") == "hello world" and normalised_text("?!") is None
    first_letter = lambda text: text.strip()[0].lower()  # noqa: E731
    grader = Consistency(extractor=first_letter)
    assert grader.score(frame).tolist() == [0.75, 0.75, 0.75, 0.25]
    assert grader.extractor == "<lambda>"  # recorded by name in a run's config


def test_consistency_embedding_clusters_paraphrases():
    frame = _table({"q": ["The capital of France is Paris.", "Paris is the capital of France.",
                          "France's capital city is Paris.", "I like turtles and long walks on the beach."],
                    "r": ["Berlin is the capital of Germany.", "The capital of Germany is Berlin.", ""]}, task=None)
    grader = Consistency(extractor="embedding")
    scores = grader.score(frame).tolist()
    assert scores[:4] == [0.75, 0.75, 0.75, 0.25]
    assert scores[4:] == pytest.approx([2 / 3, 2 / 3, 0.0])  # the empty completion has no answer
    assert grader.majority_answer_["q"] == "The capital of France is Paris."
    # the text extractor sees four different answers where the embedding sees one
    assert Consistency(extractor="text").score(frame).tolist()[:3] == [0.25] * 3


def test_consistency_without_an_extractor_says_how_to_fix():
    with pytest.raises(InputDataError, match="extractor='text' or 'embedding' or a callable") as error:
        Consistency().score(_table({"q": ["a", "b"]}, task="instructions"))
    assert "instructions" in str(error.value)
    with pytest.raises(InputDataError, match="no 'task' column"):
        Consistency().score(_table({"q": ["a", "b"]}, task=None))
    with pytest.raises(InputDataError):
        Consistency(extractor="regex")


def _arithmetic_table(n_prompts: int = 6, k: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return _table({f"p{i}": [f"It is {v}." for v in rng.integers(0, 3, k)] for i in range(n_prompts)})


def test_consistency_through_grade_and_a_resumed_run(tmp_path):
    samples = _arithmetic_table()
    expected = Consistency().score(samples)
    whole = grade(samples, [Consistency()], run=Run(tmp_path / "whole"))
    assert np.allclose(whole["score__consistency"], expected)
    assert Run(tmp_path / "whole").config["grade:consistency:gen-000"]["extractor"] is None

    # graded on half the prompts first (a stopped run), then on all: the same scores
    run = Run(tmp_path / "halves")
    grade(samples[samples["prompt_id"].isin(["p0", "p1", "p2"])], [Consistency()], run=run)
    again = grade(samples, [Consistency()], run=run)
    assert np.allclose(again["score__consistency"], expected) and len(run.parts("scores/consistency")) == 2

    # killed after a part that holds only some rows of prompt p1: its other rows are scored against all of p1
    run = Run(tmp_path / "killed")
    first = samples.iloc[:6]  # p0 whole, p1's first two rows
    run.append("scores/consistency", pd.DataFrame({"sample_id": first["sample_id"], "score": expected[:6]}))
    run.check_config(run.config_key("grade", "consistency", 0), grader_config(Consistency()))  # as grade() would
    grader = Consistency()
    resumed = grade(samples, [grader], run=run)
    assert np.allclose(resumed["score__consistency"], expected)
    assert grader.majority_answer_.keys() == {f"p{i}" for i in range(1, 6)}  # p1 was given whole


# ------------------------------------------------------------------------------------------------ Panel

def _graded_table() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3"], "prompt_id": ["p"] * 4,
                         "score__judge": [0.9, 0.2, np.nan, 0.6], "score__consistency": [0.5, 0.75, 0.25, np.nan],
                         "score__certainty": [0.4, 0.1, np.nan, np.nan]})


def test_panel_mean_min_and_vote():
    frame = _graded_table()
    graders = ["judge", "consistency", "certainty"]
    assert Panel(graders, how="mean").score(frame).tolist() == pytest.approx([0.6, 0.35, 0.25, 0.6])
    assert Panel(graders, how="min").score(frame).tolist() == pytest.approx([0.4, 0.1, 0.25, 0.6])
    vote = Panel(graders, how="vote", thresholds={"judge": 0.5, "consistency": 0.6, "certainty": 0.3})
    assert vote.score(frame).tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 1.0])
    # default threshold 0.5; a row no grader scored gets NaN
    frame.loc[2, "score__consistency"] = np.nan
    assert np.isnan(Panel(graders, how="vote").score(frame)[2])
    assert Panel(["score__judge"], how="mean").graders == ["judge"]


def test_panel_names_the_graders_to_run_first():
    with pytest.raises(InputDataError, match=r"\['reward'\]") as error:
        Panel(["judge", "reward"]).score(_graded_table())
    assert "grade(" in error.value.fix
    with pytest.raises(InputDataError, match="score__verifier"):
        Panel(["judge"], how="logistic").score(_graded_table())
    with pytest.raises(InputDataError, match="one of its graders"):
        Panel(["judge", "verifier"], how="logistic")
    with pytest.raises(InputDataError, match="human_labels"):
        Panel(["judge"], how="logistic", labels="human")


def _synthetic(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A perfect grader (the label plus small noise) and a useless one (uniform noise)."""
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 2, n).astype(float)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "prompt_id": [f"p{i // 4}" for i in range(n)],
                         "score__perfect": np.clip(good * 0.8 + 0.1 + rng.normal(0, 0.05, n), 0, 1),
                         "score__noise": rng.uniform(size=n), "score__verifier": good})


def test_panel_logistic_weighs_the_perfect_grader_most():
    frame = _synthetic()
    frame.loc[frame.index[:10], "score__noise"] = np.nan  # imputed with the fitting rows' mean
    panel = Panel(["perfect", "noise"], how="logistic", n_labels=40, seed=1)
    scores = panel.score(frame)
    assert scores.between(0, 1).all() and scores.notna().all()
    assert abs(panel.weights_["perfect"]) > 3 * abs(panel.weights_["noise"]) and panel.weights_["perfect"] > 0
    assert "intercept" in panel.weights_ and panel.cv_auc_ > 0.95 and "5-fold" in panel.message_
    assert len(panel.training_ids_) == 40 and set(panel.training_ids_) <= set(frame["sample_id"])
    good = frame["score__verifier"] == 1
    assert scores[good].mean() > 0.7 > 0.3 > scores[~good].mean()
    # the same seed draws the same labelled rows
    again = Panel(["perfect", "noise"], how="logistic", n_labels=40, seed=1)
    again.score(frame)
    assert again.training_ids_ == panel.training_ids_


def test_panel_logistic_on_human_labels_and_the_one_class_error():
    frame = _synthetic(60)
    human = {sid: ("good" if v else "bad") for sid, v in zip(frame["sample_id"], frame["score__verifier"])}
    panel = Panel(["perfect", "noise"], how="logistic", labels="human", human_labels=human, n_labels=20)
    assert panel.score(frame).notna().all() and panel.human_labels.startswith("60 labels, sha1 ")
    frame["score__verifier"] = 1.0
    with pytest.raises(InputDataError, match="all 8 labelled rows used .* are correct") as error:
        Panel(["perfect", "noise"], how="logistic", n_labels=8).score(frame)
    assert "Raise n_labels" in error.value.fix
    few = _synthetic(40).assign(score__verifier=[1.0] * 39 + [0.0])  # one bad row: no cross-validation
    panel = Panel(["perfect", "noise"], how="logistic", n_labels=40)
    panel.score(few)
    assert np.isnan(panel.cv_auc_) and "cv_auc_ is NaN" in panel.message_


class _Column:
    """A grader that returns a column the test made (stands in for a model grader)."""

    def __init__(self, name: str, values: dict):
        self.name, self._values = name, values

    def score(self, samples):
        return samples["sample_id"].map(self._values).astype(float)


def test_panel_training_rows_are_marked_in_the_run(tmp_path):
    synthetic = _synthetic(48)
    samples = synthetic[["sample_id", "prompt_id"]].assign(
        prompt="question", reference="1", task="arithmetic",
        completion=[f"It is {int(v)}." for v in synthetic["score__verifier"]])  # the verifier gives the label
    judge = _Column("judge", dict(zip(synthetic["sample_id"], synthetic["score__perfect"])))
    panel = Panel(["judge", "consistency"], how="logistic", n_labels=16)
    run = Run(tmp_path / "run")
    run.append("samples", samples)
    graded = grade(samples, [Verifier(), Consistency(), judge, panel], run=run)
    assert graded["score__panel"].between(0, 1).all()
    stored = run.graded()
    marked = stored.loc[stored[TRAINED_PREFIX + "panel"], "sample_id"]
    assert sorted(marked) == sorted(panel.training_ids_) and len(marked) == 16
    assert TRAINED_PREFIX + "judge" not in stored.columns
    assert "weights_" not in run.config["grade:panel:gen-000"]  # fitted results stay out of the settings


# ---------------------------------------------------------------------------------------- SelfCertainty

@pytest.fixture
def hf_only(tiny, monkeypatch):
    """The tiny model with the fast engine ruled out, so the facade takes its transformers path."""
    assert tiny.engine is not None
    monkeypatch.setattr("workbench.engine.supports", lambda model: False)
    return dataclasses.replace(tiny)


def _tiny_sequences(tiny):
    texts = ["What is 12+7?", "Write a haiku about the sea.", "Hi"]
    sequences = [tiny.encode(t, chat=True) + [28, 29, 30, 31] for t in texts] + [tiny.encode(texts[0], chat=False)]
    return sequences, [len(s) - 4 for s in sequences[:-1]] + [0]


def test_token_statistics_engine_and_transformers_agree(tiny, hf_only):
    sequences, starts = _tiny_sequences(tiny)
    fast = tiny.token_statistics(sequences, starts, batch_size=2)
    slow = hf_only.token_statistics(sequences, starts)
    lengths = [4, 4, 4, len(sequences[-1]) - 1]  # the raw prompt is scored from its second token on
    assert [len(s["logprob"]) for s in fast] == [len(s["mean_logprob"]) for s in slow] == lengths
    for a, b, logprobs in zip(fast, slow, tiny.token_logprobs(sequences, starts, batch_size=2)):
        np.testing.assert_allclose(a["logprob"], b["logprob"], atol=2e-4)
        np.testing.assert_allclose(a["mean_logprob"], b["mean_logprob"], atol=2e-4)
        np.testing.assert_allclose(a["logprob"], logprobs, atol=1e-6)  # the same numbers as token_logprobs
    assert tiny.token_statistics([sequences[0]], [len(sequences[0])])[0]["mean_logprob"].size == 0


def _tiny_samples():
    return pd.DataFrame({"prompt": ["What is 2 + 2?", "What is 3 + 5?", "Name a colour.", "Hi"],
                         "completion": ["4", "It is 8, I think.", "Blue is a colour", ""], "chat": True})


def test_self_certainty_on_tiny(tiny, hf_only):
    import torch

    samples = _tiny_samples()
    scores = SelfCertainty(model=tiny).score(samples)
    assert scores[:3].between(0, 1).all() and np.isnan(scores[3])  # an empty completion has no position
    np.testing.assert_allclose(SelfCertainty(model=hf_only).score(samples), scores, atol=1e-4)
    # by hand for row 1: mean over completion positions of KL(U || p) = -log V - mean_v log p, then x / (x + log V)
    prompt_ids = tiny.encode(samples["prompt"][1], True)
    ids = prompt_ids + tiny.tokenizer.encode(samples["completion"][1], add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0, len(prompt_ids) - 1:-1], -1)
    log_v = np.log(logp.shape[-1])
    x = float((-log_v - logp.mean(-1)).mean())
    assert scores[1] == pytest.approx(x / (x + log_v), abs=1e-5)
    mean_logprob = SelfCertainty(model=tiny, kind="mean_logprob").score(samples)
    np.testing.assert_array_equal(mean_logprob, Perplexity(model=tiny).score(samples))
    with pytest.raises(InputDataError, match="kind"):
        SelfCertainty(model=tiny, kind="entropy")


@pytest.mark.real_model
def test_self_certainty_prefers_a_correct_answer_to_garbage_on_the_real_model(real):
    prompts = ["What is 2 + 2? Answer with the number only.", "What is 3 + 5? Answer with the number only.",
               "What is 10 - 4? Answer with the number only."]
    samples = pd.DataFrame({"prompt": [p for p in prompts for _ in (0, 1)], "chat": True,
                            "completion": ["4", "zebra qx purple lamp", "8", "zebra qx purple lamp",
                                           "6", "zebra qx purple lamp"]})
    for kind in ("self_certainty", "mean_logprob"):
        scores = SelfCertainty(model=real, kind=kind).score(samples).to_numpy()
        assert ((0 < scores) & (scores <= 1)).all()
        assert (scores[0::2] > scores[1::2]).all(), (kind, scores)
