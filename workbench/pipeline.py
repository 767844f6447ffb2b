"""The default story per task, shared by the demo, the notebooks and the CLI: which graders score a
task's samples and which acceptance policy selects them."""
from __future__ import annotations

import pandas as pd

from .graders import Heuristics, Novelty, Perplexity, Realism, SelfJudge, Verifier
from .tasks import get_task

# task -> keyword arguments of workbench.select.accept
POLICIES = {
    "arithmetic": {"thresholds": {"verifier": 1.0}},
    "instructions": {"thresholds": {"judge": 0.5, "heuristics": 0.5}, "dedup": "minhash"},
    "corpus": {"thresholds": {"heuristics": 0.3}, "target_rate": 0.5, "rank_by": "perplexity"},
}


def default_graders(task: str, model, samples_by_task: dict[str, pd.DataFrame] | None = None) -> list:
    """Every applicable grader for a task's samples.

    Realism on the corpus task is trained on held-out real passages versus the model's *instruction*
    answers when those exist, so no corpus sample it scores was in its training data.
    """
    judge, perplexity, heuristics = SelfJudge(model=model), Perplexity(model=model), Heuristics()
    if task == "arithmetic":
        return [Verifier(), Verifier(name="verifier_strict", strict=True), judge, perplexity, heuristics]
    if task == "instructions":
        seeds = get_task("instructions")["reference"].tolist()
        return [judge, perplexity, heuristics, Novelty(pool=seeds, name="novelty_vs_seeds")]
    graders = [perplexity, heuristics]
    synthetic = (samples_by_task or {}).get("instructions")
    if synthetic is not None and len(synthetic) >= 2:
        real = get_task("corpus", n=None, split="heldout")["reference"].tolist()
        graders.append(Realism(real, synthetic["completion"].tolist()))
    return graders
