"""Metrics over samples: diversity, the judge audit (`workbench.metrics.audit`) and the judge-bias probes
(`workbench.metrics.probes`)."""
from .audit import accuracy_at, audit_table, cohen_kappa, judge_audit, reliability_table, roc_auc, score_inflation
from .diversity import (compression_ratio, distinct_n, diversity_report, homogenization, ngram_entropy,
                        ngram_vendi, self_bleu, self_repetition, tokenize, vendi_score)
from .probes import (authority_bias, is_pairwise, mean_ci, position_bias, run_probes, self_preference, spearman_ci,
                     verbosity_bias)

__all__ = ["accuracy_at", "audit_table", "cohen_kappa", "judge_audit", "reliability_table", "roc_auc",
           "score_inflation",
           "compression_ratio", "distinct_n", "diversity_report", "homogenization", "ngram_entropy",
           "ngram_vendi", "self_bleu", "self_repetition", "tokenize", "vendi_score",
           "authority_bias", "is_pairwise", "mean_ci", "position_bias", "run_probes", "self_preference", "spearman_ci",
           "verbosity_bias"]
