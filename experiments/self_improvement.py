"""Experiment 1: self-improvement with a verifier (STaR / ReST-EM) on arithmetic, beside the same loop
with the model's own judge as the only filter. Reports strict accuracy (the final answer alone) on
held-out problems per generation. See workbench/experiments.py for the exact setup.

    python experiments/self_improvement.py --seed 0   # full size, one seed (~22 min on a 2-core CPU)
    python experiments/self_improvement.py            # seeds 0,1,2 (3 x that); --seeds picks others
    python experiments/self_improvement.py --smoke --seed 0   # a minute: every stage, tiny sizes
"""
from __future__ import annotations

from common import run_experiment

COLUMNS = ["arm", "generation", "accuracy_strict", "accuracy_lenient", "accept_rate", "accepted", "judge_roc_auc",
           "heldout_perplexity", "diversity_distinct_2", "train_last_loss"]


def strict_gain_points(frame) -> dict:
    """Per arm: strict accuracy of the last generation minus generation 0, in points, per seed and its mean
    with the 95% t-interval half-width across seeds."""
    from workbench.experiments import mean_ci

    out = {}
    for arm, by_arm in frame.groupby("arm", sort=False):
        per_seed = {int(seed): 100 * float(g.sort_values("generation")["accuracy_strict"].iloc[-1]
                                           - g.sort_values("generation")["accuracy_strict"].iloc[0])
                    for seed, g in by_arm.groupby("seed")}
        mean, half = mean_ci(list(per_seed.values()))
        out[arm] = {"mean": mean, "ci95": half, "per_seed": per_seed}
    return {"strict_gain_points": out}


def main(argv: list[str] | None = None) -> int:
    from workbench.experiments import self_improvement_configs

    return run_experiment("self_improvement", self_improvement_configs, COLUMNS, __doc__, extra=strict_gain_points,
                          argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
