"""How good a model is, measured the same way by the self-learning loop and the training panel:
held-out perplexity on real text, strict and lenient accuracy on held-out problems (arithmetic), and
the diversity report of free generations from fixed prompts.

    metrics = evaluate(loaded, Run("data/runs/x/eval"), task="arithmetic", settings=EvalConfig(heldout_problems=60))

`settings` is the loop's `workbench.loop_config.EvalConfig` (any object with its fields). The generations go
into `run`, so an interrupted evaluation resumes row by row.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

if TYPE_CHECKING:
    from .loop_config import EvalConfig
    from .store import Run

HELDOUT_SEED = 1_000_003  # held-out problems come from their own seed and exclude every training prompt
DIVERSITY_KEYS = ("distinct_1", "distinct_2", "entropy_2", "compression_ratio", "self_bleu", "vendi_ngram",
                  "mean_words")  # reported as diversity_<key>


def heldout_problems(task: str, task_params: dict, n: int, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """`n` verifiable problems from the task's held-out split, minus (to be sure) any prompt in `exclude`."""
    from .tasks import get_task

    seen = set(exclude)
    problems = get_task(task, **{**task_params, "n": n, "seed": HELDOUT_SEED, "split": "heldout"})
    return problems[~problems["prompt"].isin(seen)].head(n).reset_index(drop=True)


def diversity_prompts(task: str, n: int, diversity_task: str = "auto") -> pd.DataFrame:
    """Fixed prompts for free generations: `diversity_task`'s, or (auto) held-out corpus prompts for the
    corpus task and instructions for any other."""
    from .tasks import get_task

    if diversity_task == "auto":
        diversity_task = "corpus" if task == "corpus" else "instructions"
    if diversity_task == "corpus":
        return get_task("corpus", n=n, split="heldout", seed=HELDOUT_SEED)
    return get_task(diversity_task, n=n)


def evaluate(loaded, run: "Run", task: str, settings: "EvalConfig", task_params: dict | None = None,
             seed: int = 0, training_prompts: Iterable[str] = ()) -> dict:
    """Held-out perplexity, task accuracy (strict and lenient; arithmetic only), and diversity of free
    generations of model `loaded`; its generations go into `run`. `training_prompts` (read only for
    arithmetic) are left out of the held-out problems."""
    from .sampling import generate
    from .graders import Verifier
    from .metrics import diversity_report
    from .metrics.collapse import heldout_logprobs, passage_perplexities, pooled_perplexity
    from .tasks import get_task

    out: dict[str, Any] = {}
    started = time.perf_counter()
    heldout = get_task("corpus", n=settings.heldout_texts, split="heldout")
    texts = (heldout["prompt"] + " " + heldout["reference"]).tolist()
    scored = heldout_logprobs(loaded, texts, max_length=getattr(settings, "heldout_tokens", 256))
    out["heldout_perplexity"] = pooled_perplexity(scored)
    out["heldout_texts"] = len(texts)
    # per passage, for the tails and Shumailov et al.'s histogram (viz.perplexity_histograms)
    run.write_frame(0, "heldout_perplexity", pd.DataFrame(
        {"prompt_id": heldout["prompt_id"].iloc[:len(scored)].tolist() if len(scored) == len(heldout) else None,
         "perplexity": passage_perplexities(scored), "tokens": [len(lp) for _, lp in scored]}))

    if task == "arithmetic":
        problems = heldout_problems(task, dict(task_params or {}), settings.heldout_problems, training_prompts)
        if len(problems):
            answers = generate(problems, model=loaded, temperature=0.0, max_new_tokens=settings.answer_tokens,
                               run=run, seed=seed)
            out["accuracy_strict"] = float(Verifier(strict=True).score(answers).mean())
            out["accuracy_lenient"] = float(Verifier().score(answers).mean())
            out["heldout_problems"] = len(answers)
            out["heldout_answer_tokens"] = float(answers["n_completion_tokens"].mean())
    prompts = diversity_prompts(task, settings.diversity_prompts, settings.diversity_task)
    free = generate(prompts, model=loaded, temperature=0.8, max_new_tokens=settings.diversity_tokens, run=run,
                    seed=seed)
    report = diversity_report(free["completion"].tolist())
    # answer length, for the collapse monitor's length drift (preference learning's known failure: answers grow)
    out["eval_answer_tokens"] = float(free["n_completion_tokens"].mean()) if len(free) else None
    out["eval_answers_at_budget"] = float((free["finish_reason"] == "length").mean()) if len(free) else None
    for key in DIVERSITY_KEYS:
        out[f"diversity_{key}"] = report[key]
    if getattr(settings, "tails", True):
        out.update(_tails(loaded, scored, free, prompts))
    out["eval_seconds"] = time.perf_counter() - started
    return out


def _tails(loaded, scored: list, free: pd.DataFrame, prompts: pd.DataFrame) -> dict:
    """The tail metrics (workbench.metrics.collapse.tail_report) and generation 0's noise floor for them
    (`noise`, bootstrap). Rare tokens are defined on the corpus's training split (never the held-out text);
    the free generations are compared with the real continuations of the same prompts where the prompts
    have them (corpus), else the vocabulary metrics are left out."""
    from .metrics.collapse import bootstrap_noise, tail_report

    frequencies = _corpus_frequencies(loaded.tokenizer)
    has_reference = "reference" in prompts.columns and prompts["reference"].notna().all() and len(free)
    real = prompts.set_index("prompt_id")["reference"].reindex(free["prompt_id"]).tolist() if has_reference else []
    free_texts = free["completion"].tolist() if has_reference else []
    report = tail_report(scored, frequencies, free_texts, real)
    if not has_reference:
        for key in ("vocab_coverage", "unigram_entropy", "unigram_entropy_real"):
            report.pop(key)
    report["noise"] = bootstrap_noise(scored, frequencies, free_texts if has_reference else free["completion"].tolist(),
                                      real)
    return report


def _corpus_frequencies(tokenizer):
    """Token counts of the corpus task's training split under `tokenizer` (cached per tokenizer)."""
    from .metrics.collapse import token_frequencies
    from .tasks import get_task

    key = getattr(tokenizer, "name_or_path", None) or id(tokenizer)
    if key not in _FREQUENCIES:
        train = get_task("corpus", n=None, split="train")
        _FREQUENCIES[key] = token_frequencies(tokenizer, (train["prompt"] + " " + train["reference"]).tolist())
    return _FREQUENCIES[key]


_FREQUENCIES: dict = {}  # tokenizer -> Counter; a process-wide cache of a pure function of the tokenizer
