"""Metrics over samples: diversity, and the judge audit (`workbench.metrics.audit`)."""
from .audit import accuracy_at, cohen_kappa, judge_audit, reliability_table, roc_auc, score_inflation
from .diversity import (compression_ratio, distinct_n, diversity_report, homogenization, ngram_entropy,
                        ngram_vendi, self_bleu, self_repetition, tokenize, vendi_score)

__all__ = ["accuracy_at", "cohen_kappa", "judge_audit", "reliability_table", "roc_auc", "score_inflation",
           "compression_ratio", "distinct_n", "diversity_report", "homogenization", "ngram_entropy",
           "ngram_vendi", "self_bleu", "self_repetition", "tokenize", "vendi_score"]
