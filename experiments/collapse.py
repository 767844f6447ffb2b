"""Experiment 2: model collapse on the corpus task (continue real text: CPython's own prose), measured the way
the papers do. Six arms at the same training compute: `replace`, `keep_real_0.1`, `accumulate` (these three at
temperature 1.0, no truncation), replace at two further decodings (`replace_top_p_0.9`, `replace_temp_0.7`), and
detector-weighted replace at temperature 0.7 (`detector_replace_temp_0.7`: each generation's continuations
redrawn by the realism detector's P(real), Drayson et al. 2025, at the decoding where replace collapses fastest).
5 generations, 3 seeds.
Per generation: held-out perplexity pooled and per passage (mean, 90th and 99th percentile), the probability
of the real text's rare tokens, vocabulary coverage and unigram entropy of free continuations against the real
ones, distinct-2 and n-gram Vendi; the change from generation 0 and the difference from `replace`, paired per
seed, with 95% intervals; verdicts say which moves are larger than the noise. Configs:
workbench/model_collapse.py.

    python experiments/collapse.py                    # 6 arms x 5 generations x seeds 0,1,2 (resumable)
    python experiments/collapse.py --seed 0           # one seed
    python experiments/collapse.py --smoke --seed 0   # every stage, tiny sizes (the test suite runs it)

Default size (chosen so the whole experiment fits in 90 minutes on a 2-core CPU): 32 passages continued per
generation, 48 new tokens each; 4 optimizer steps of 1024 tokens per generation at lr 1e-4, continuing from the
last checkpoint; perplexity on 200 held-out passages cut to 48 tokens; 24 free continuations of 48 tokens of
held-out prompts for the vocabulary and diversity metrics. Generation 0 is evaluated once per seed and shared.
"""
from __future__ import annotations

from common import markdown_table, run_experiment

COLUMNS = ["arm", "generation", "heldout_perplexity", "heldout_ppl_mean", "heldout_ppl_p90", "heldout_ppl_p99",
           "rare_token_prob", "vocab_coverage", "unigram_entropy", "unigram_entropy_real", "diversity_distinct_2",
           "diversity_self_bleu", "diversity_vendi_ngram", "diversity_mean_words", "eval_answer_tokens",
           "train_examples", "mean_score_realism", "detector_auc_realism", "collapsed", "collapse_flags", "eval_seconds"]
SHOWN = ["heldout_perplexity", "heldout_ppl_p90", "heldout_ppl_p99", "rare_token_prob", "vocab_coverage",
         "unigram_entropy", "diversity_distinct_2", "diversity_vendi_ngram", "collapsed"]


def headline(frame) -> dict:
    from workbench.model_collapse import collapse_tables

    tables = collapse_tables(frame)
    return {"changes": tables["changes"].to_dict("records"), "versus": tables["versus"].to_dict("records"),
            "verdicts": tables["verdicts"]}


def markdown(summary, fields: dict) -> str:
    import pandas as pd

    from workbench.experiments import format_summary

    table = format_summary(summary, [m for m in SHOWN if f"{m}_mean" in summary.columns])
    changes, versus = pd.DataFrame(fields["changes"]), pd.DataFrame(fields["versus"])

    def said(frame, mean, half):
        return frame.assign(**{"mean ± 95%": [f"{m:+.3g} ± {h:.2g}" for m, h in zip(frame[mean], frame[half])],
                               "larger than the noise": frame["clear"].map({True: "yes", False: "no"})})

    parts = [markdown_table(table)]
    if len(changes):
        wide = said(changes, "change_mean", "change_ci95").pivot(index="arm", columns="metric", values="mean ± 95%")
        wide = wide.reindex(index=list(dict.fromkeys(changes["arm"])),
                            columns=[m for m in dict.fromkeys(changes["metric"])]).reset_index()
        parts += ["Change from generation 0 to the last generation, paired per seed (mean ± 95% half-width over "
                  "seeds; a change is larger than the noise where the interval excludes 0):", markdown_table(wide)]
    if len(versus):
        wide = said(versus, "difference_mean", "difference_ci95").pivot(index="arm", columns="metric",
                                                                         values="mean ± 95%")
        wide = wide.reindex(index=list(dict.fromkeys(versus["arm"])),
                            columns=[m for m in dict.fromkeys(versus["metric"])]).reset_index()
        wide.insert(1, "versus", [versus.loc[versus["arm"] == arm, "versus"].iloc[0] for arm in wide["arm"]])
        parts += ["Each arm minus its reference arm (`replace`; a detector-weighted arm: replace at its own "
                  "decoding) at the last generation, paired per seed:", markdown_table(wide)]
    parts.append("\n".join(f"- {text}" for text in fields["verdicts"].values()))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    from workbench.model_collapse import COLLAPSE_METRICS, collapse_configs

    return run_experiment("collapse", collapse_configs, COLUMNS, __doc__, metrics=COLLAPSE_METRICS, extra=headline,
                          markdown=markdown, share_base_eval=True, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
