"""Graders: one protocol, `score(samples) -> Series`, and `grade` to add `score__<name>` columns.

| grader | score | range |
|---|---|---|
| `SelfJudge` | P("Yes") over Yes/No after a rubric prompt, or the expected 1-5 rating | [0, 1] |
| `PairwiseJudge` | Bradley-Terry strength from the model's A-vs-B verdicts on pairs of one prompt's answers, both orders | [0, 1], NaN for a one-sample prompt |
| `Consistency` | share of the prompt's samples that give the same answer (self-consistency, no labels) | [0, 1], NaN for a one-sample prompt |
| `SelfCertainty` | the generator's confidence in its answer: mean KL(U‖p) over the answer's tokens | [0, 1] |
| `Panel` | several graders in one score: mean, min, vote, or a logistic regression fitted on a few labels | [0, 1] |
| `Verifier` | the final number equals the reference (or your callable) | {0, 1}, NaN without reference |
| `Perplexity` | exp(mean token log-prob of the completion) under a reference model | (0, 1] |
| `Realism` | P(real) from logistic regression on sentence embeddings | [0, 1] |
| `Novelty` | 1 - max cosine similarity to a pool | [0, 1] |
| `RewardModel` | a sequence-classification model's probability | [0, 1] |
| `Heuristics` | length x non-repetition x no-refusal x printable | [0, 1] |
"""
from .base import Grader, grade, grader_config, scoring_method
from .certainty import SelfCertainty
from .consistency import Consistency
from .embedding_graders import Novelty, Realism, RewardModel
from .heuristics import Heuristics, heuristic_features
from .model_graders import Perplexity, SelfJudge
from .pairwise import PairwiseJudge
from .panel import Panel
from .verifier import Verifier, is_strict_answer, parse_final_number

__all__ = ["Grader", "grade", "grader_config", "scoring_method", "SelfJudge", "PairwiseJudge", "Consistency",
           "SelfCertainty", "Panel", "Verifier", "Perplexity", "Realism", "Novelty", "RewardModel", "Heuristics",
           "heuristic_features", "parse_final_number", "is_strict_answer"]
