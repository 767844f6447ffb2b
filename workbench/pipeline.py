"""The default story per task, shared by the demo, the notebooks and the CLI: which graders score a
task's samples and which selection policy selects them."""
from __future__ import annotations

import pandas as pd

from .graders import Heuristics, Novelty, Perplexity, Realism, SelfJudge, Verifier
from .select import SelectionPolicy
from .tasks import get_task

# task -> the selection policy the demo and notebooks apply to its samples
TASK_POLICIES = {
    "arithmetic": SelectionPolicy(thresholds={"verifier": 1.0}),
    "instructions": SelectionPolicy(thresholds={"judge": 0.5, "heuristics": 0.5}, dedup="minhash"),
    "corpus": SelectionPolicy(thresholds={"heuristics": 0.3}, target_rate=0.5, rank_by="perplexity"),
}


def default_graders(task: str, model, samples_by_task: dict[str, pd.DataFrame] | None = None) -> list:
    """Every applicable grader for a task's samples.

    model: a loaded model, a spec or a backend (see workbench.backends).
    Realism on the corpus task is trained on held-out real passages versus the model's *instruction*
    answers when those exist, so no corpus sample it scores was in its training data.
    """
    from .backends import is_backend_spec
    from .models import DEFAULT_MODEL

    # a server returns no log-probability of given text: perplexity then uses the embedded model as reference
    reference = DEFAULT_MODEL if is_backend_spec(model) else model
    judge, perplexity, heuristics = SelfJudge(model=model), Perplexity(model=reference), Heuristics()
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


def generation_plan(n_arithmetic: int = 48, n_instructions: int = 48, n_corpus: int = 24, max_new_tokens: int = 96,
                    seed: int = 0, temperature: float = 0.8) -> dict[str, dict]:
    """task -> keyword arguments of workbench.generate, shared by notebook 01 and the demo (so the demo's
    run folder is exactly what notebook 01 would write, and its report resumes instead of regenerating)."""
    common = {"seed": seed, "temperature": temperature}
    return {
        "arithmetic": dict(prompts=get_task("arithmetic", n=n_arithmetic), n_per_prompt=2,
                           max_new_tokens=min(32, max_new_tokens), **common),
        "instructions": dict(prompts=get_task("instructions", n=n_instructions), n_per_prompt=1,
                             max_new_tokens=max_new_tokens, **common),
        "corpus": dict(prompts=get_task("corpus", n=n_corpus), n_per_prompt=1, max_new_tokens=max_new_tokens, **common),
    }
