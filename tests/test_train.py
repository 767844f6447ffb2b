"""Fine-tuning and data-mix policies: targets (completion + end-of-turn), buckets, gradient
accumulation, full and LoRA on the tiny model, a memorisation check on the real model."""
import numpy as np
import pandas as pd
import pytest

from workbench.errors import InputDataError
from workbench.train import (_batch_loss, _micro_batches, finetune, length_buckets, mix, parse_mix,
                             real_examples, tokenize_examples)


def examples(n=4):
    return pd.DataFrame({"prompt": [f"What is {i} + {i}?" for i in range(n)],
                         "completion": [str(2 * i) for i in range(n)], "chat": True, "finish_reason": "stop"})


def test_targets_are_the_completion_and_the_end_of_turn_token(tiny):
    tokenizer = tiny.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end == tokenizer.pad_token_id  # the trap: a collator masking pad would mask this token
    rows = tokenize_examples(pd.DataFrame({"prompt": ["Say hi", "Go on:"], "completion": ["hi", " and on"],
                                           "chat": [True, False], "finish_reason": ["stop", "length"]}), tokenizer)
    (ids, n_prompt), (raw_ids, raw_prompt) = rows
    assert ids[-1] == end and ids[n_prompt:] == tokenizer("hi", add_special_tokens=False)["input_ids"] + [end]
    assert tokenizer.decode(ids[:n_prompt]).rstrip().endswith("assistant")
    assert raw_ids[-1] != end  # cut off by the length limit: it did not end by itself, so no end token


def test_loss_counts_exactly_the_target_positions(tiny):
    import torch

    rows = tokenize_examples(examples(3), tiny.tokenizer)
    loss, n_targets = _batch_loss(tiny.model, rows, "cpu", tiny.tokenizer.pad_token_id)
    assert n_targets == sum(len(ids) - n for ids, n in rows)
    # independent: per-row full-logit loss over completion positions, averaged over all targets
    total = 0.0
    for ids, n in rows:
        with torch.no_grad():
            logits = tiny.model(torch.tensor([ids])).logits[0]
        total += float(torch.nn.functional.cross_entropy(logits[n - 1:-1], torch.tensor(ids[n:]), reduction="sum"))
    assert float(loss) == pytest.approx(total / n_targets, rel=1e-4)


def test_length_buckets_cover_every_row_once_within_budget():
    lengths = list(np.random.default_rng(0).integers(5, 120, size=300))
    batches = length_buckets(lengths, tokens_per_batch=512, seed=1)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(300))
    assert all(max(lengths[i] for i in b) * len(b) <= 512 for b in batches)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.05  # similar lengths together: little padding
    assert batches != length_buckets(lengths, tokens_per_batch=512, seed=2)  # order shuffled per seed


def test_gradient_accumulation_gives_the_same_gradient(tiny):
    import torch

    import copy

    rows = tokenize_examples(examples(6), tiny.tokenizer)
    n_targets = sum(len(ids) - n for ids, n in rows)
    # float64: the identity is exact math; in fp32 the two summation orders differ by ~1e-4 relative on some
    # CPUs (seen on an AMD EPYC), which says nothing about the accumulation
    model = copy.deepcopy(tiny.model).double()

    def gradient(budget):
        model.zero_grad()
        for piece in _micro_batches(rows, budget):
            loss, count = _batch_loss(model, piece, "cpu", tiny.tokenizer.pad_token_id)
            (loss * count / n_targets).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()
        model.zero_grad()
        return grad

    assert len(_micro_batches(rows, 40)) > 1
    assert torch.allclose(gradient(10_000), gradient(40), atol=1e-12, rtol=1e-9)


def test_full_finetune_learns_and_writes_a_loadable_checkpoint(tiny, tmp_path):
    import torch

    from workbench.models import load_model

    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    events = []
    result = finetune(examples(), model=tiny, out_dir=tmp_path, callback=events.append, epochs=30,
                      learning_rate=3e-3, warmup_steps=0)
    assert len(events) == len(result.history) == result.stats["steps"] == 30
    assert result.history["loss"].iloc[-5:].mean() < 0.5 * result.history["loss"].iloc[:5].mean()
    assert result.stats["padding_share"] < 0.5 and result.stats["real_tokens"] > 0
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())  # caller's model untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temporary folder left
    reloaded = load_model(str(result.checkpoint), dtype="fp32")
    trained = result.model.state_dict()
    assert all(torch.allclose(trained[k], v) for k, v in reloaded.model.state_dict().items())
    assert (result.checkpoint / "train_history.jsonl").exists() and (result.checkpoint / "train_stats.json").exists()


def test_lora_trains_adapters_and_saves_a_merged_model(tiny, tmp_path):
    import torch

    from workbench.models import load_model

    result = finetune(examples(), model=tiny, method="lora", out_dir=tmp_path, epochs=10, learning_rate=1e-2)
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]
    merged = load_model(str(result.checkpoint), dtype="fp32").model.state_dict()
    base = tiny.model.state_dict()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # adapters merged into the targeted projections only
    assert not any("lora" in k for k in merged)


def test_bad_training_input_says_what_to_do(tiny):
    with pytest.raises(InputDataError, match="accepted nothing"):
        finetune(examples().iloc[:0], model=tiny)
    with pytest.raises(InputDataError, match="lack column"):
        finetune(pd.DataFrame({"text": ["x"]}), model=tiny)
    with pytest.raises(InputDataError, match="method"):
        finetune(examples(), model=tiny, method="qlora")


def test_mix_policies():
    real = pd.DataFrame({"prompt": [f"r{i}" for i in range(100)], "completion": "x", "chat": True})
    gens = [pd.DataFrame({"prompt": [f"g{g}-{i}" for i in range(20)], "completion": "y", "chat": True})
            for g in range(3)]
    assert set(mix("replace", gens, real)["source"]) == {"gen-002"}
    accumulated = mix("accumulate", gens, real)
    assert len(accumulated) == 160 and accumulated["source"].value_counts()["real"] == 100
    kept = mix({"keep_real": 0.2}, gens, real, seed=0)
    assert (kept["source"] == "real").mean() == pytest.approx(0.2)  # 5 real rows beside 20 synthetic
    again, other_generation = mix("keep_real(0.2)", gens, real, seed=0), mix({"keep_real": 0.2}, gens[:2], real, seed=0)
    assert kept["prompt"].tolist() == again["prompt"].tolist()  # reproducible ...
    assert set(kept.loc[kept.source == "real", "prompt"]) != set(
        other_generation.loc[other_generation.source == "real", "prompt"])  # ... and re-sampled each generation
    budget = mix({"accumulate_subsample": 50}, gens, real)
    assert len(budget) == 50 and budget["prompt"].is_unique and set(budget["source"]) <= {"real", "gen-000", "gen-001", "gen-002"}
    for bad in ("average", {"keep_real": 1.5}, {"accumulate_subsample": 0}, "keep_real"):
        with pytest.raises(InputDataError):
            parse_mix(bad)


def test_real_examples_from_a_task():
    from workbench.tasks import get_task

    arithmetic = real_examples(get_task("arithmetic", n=5))
    assert arithmetic["completion"].tolist() == get_task("arithmetic", n=5)["reference"].tolist()
    corpus = real_examples(get_task("corpus", n=3))
    assert corpus["completion"].str.startswith(" ").all() and (corpus["finish_reason"] == "length").all()


@pytest.mark.real_model
def test_real_model_learns_answers_and_to_stop(real, tmp_path):
    """Full fine-tune of the embedded model on 4 verified answers: afterwards greedy decoding gives
    exactly those answers and ends its turn (the end-of-turn token was trained)."""
    from workbench.sampling import generate
    from workbench.graders import Verifier
    from workbench.models import load_model
    from workbench.tasks import get_task

    problems = get_task("arithmetic", n=4, seed=5)
    before = generate(problems, model=real, temperature=0, max_new_tokens=12)
    train = problems.assign(completion=problems["reference"], finish_reason="stop")
    result = finetune(train, model=real, out_dir=tmp_path, epochs=12, learning_rate=1e-4, warmup_steps=1)
    assert result.stats["last_loss"] < 0.2 * result.stats["first_loss"]
    after = generate(problems, model=load_model(str(result.checkpoint), dtype="fp32"), temperature=0, max_new_tokens=12)
    assert Verifier(strict=True).score(after).mean() == 1.0 > Verifier(strict=True).score(before).mean()
    assert (after["finish_reason"] == "stop").all()


def test_training_panel_on_the_explorer_selection(tiny, tiny_model_dir, tmp_path):
    """The panel's button trains on exactly the explorer's accepted rows, the live loss plot gets one
    point per step, the progress bar reaches the end, and before/after tables are filled."""
    from workbench.sampling import generate
    from workbench.graders import Heuristics, Verifier, grade
    from workbench.tasks import get_task
    from workbench.training_panel import TrainingPanel
    from workbench.widgets import ThresholdExplorer

    samples = generate(get_task("arithmetic", n=6), model=tiny, n_per_prompt=2, max_new_tokens=8)
    graded = grade(samples, [Verifier(), Heuristics()])
    explorer = ThresholdExplorer(graded)
    threshold = float(np.median(graded["score__heuristics"]))
    explorer.set_thresholds(heuristics=threshold)
    expected = int((graded["score__heuristics"] >= threshold).sum())
    panel = TrainingPanel(explorer, model=str(tiny_model_dir), out_dir=tmp_path, train={"epochs": 3},
                          eval={"heldout_problems": 4, "heldout_texts": 3, "diversity_prompts": 3, "diversity_tokens": 8})
    assert len(panel.selected()) == expected > 0
    panel.widget  # build the UI, then press the button as a user would
    panel._ui["button"].click()
    assert "Fine-tuned on" in panel.message, panel.message
    steps = panel.result.stats["steps"]
    assert panel._ui["bar"].value == panel._ui["bar"].max == steps
    assert list(panel._ui["loss"].data[0].y) == pytest.approx(panel.result.history["loss"].tolist())
    # ... and in the widget's synced state, which a notebook saved with widget state (the HTML report) draws
    assert list(panel._ui["loss"]._widget_data[0]["y"]) == pytest.approx(panel.result.history["loss"].tolist())
    assert {"heldout_perplexity", "accuracy_strict", "diversity_distinct_2"} <= set(panel.comparison["metric"])
    assert len(panel.examples) == min(5, graded.loc[explorer.accepted_mask, "prompt"].nunique())
    assert {"before", "after"} <= set(panel.examples.columns)
    empty = TrainingPanel(samples=graded.iloc[:0], model=str(tiny_model_dir), out_dir=tmp_path / "empty")
    empty.widget
    empty._ui["button"].click()  # nothing selected: the panel says why and how to fix it, never raises
    assert "nothing to fine-tune" in empty.message and not empty._ui["button"].disabled
