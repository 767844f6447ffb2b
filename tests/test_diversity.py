"""Diversity metrics: hand-worked values from each paper's definition, the vendi-score package, properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.metrics import diversity as dv

PAIR = ["a b a b", "a b c"]  # unigrams a b a b | a b c; bigrams ab ba ab | ab bc


def test_hand_worked_values():
    assert dv.distinct_n(PAIR, 1) == pytest.approx(3 / 7)
    assert dv.distinct_n(PAIR, 2) == pytest.approx(3 / 5)
    # ab x3, ba x1, bc x1: -(0.6 log2 0.6 + 2 * 0.2 log2 0.2) = 0.6 * 0.73697 + 0.4 * 2.32193 = 1.37095 bits
    assert dv.ngram_entropy(PAIR, 2) == pytest.approx(1.37095, abs=1e-5)
    # each text shares one bigram occurrence (ab) with the other text: log(1 + 1) each
    assert dv.self_repetition(PAIR, 2) == pytest.approx(math.log(2))
    assert dv.tokenize("Hello, World!") == ["hello", ",", "world", "!"]


def test_bleu_hand_worked():
    same = dv.tokenize("the cat sat on the mat")
    assert dv._bleu(same, same) == pytest.approx(1.0)
    hyp, ref = dv.tokenize("the cat sat on a mat"), dv.tokenize("the cat sat on the mat")
    # precisions 5/6, 3/5, 2/4, 1/3 (the, cat, sat, on, mat | the cat, cat sat, sat on | ...); same length
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert dv._bleu(hyp, ref) == pytest.approx(expected)
    # no 4-gram match: epsilon 0.1 replaces the zero count. "the cat ran on the mat": unigrams 5/6 (all but
    # ran), bigrams 3/5 (the cat, on the, the mat), trigrams 1/4 (on the mat), 4-grams 0.1/3; same length:
    # BLEU = (5/6 * 3/5 * 1/4 * 0.1/3) ** (1/4) = (1/240) ** (1/4) = 0.25407
    assert dv._bleu(dv.tokenize("the cat ran on the mat"), ref) == pytest.approx(0.25407, abs=1e-5)
    # shorter hypothesis: brevity penalty exp(1 - r/c); all its n-grams match
    assert dv._bleu(dv.tokenize("the cat sat"), ref) == pytest.approx(0.0)  # no 4-gram at all: BLEU-4 is 0
    assert dv._bleu(dv.tokenize("the cat sat on"), ref) == pytest.approx(math.exp(1 - 6 / 4))


def test_self_bleu_interval():
    identical = dv.self_bleu(["the same sentence here"] * 10)
    assert identical["mean"] == pytest.approx(1.0) and identical["ci_low"] == identical["ci_high"]
    texts = [f"sentence number {i} says {'x ' * (i % 5)} something {i * 7}" for i in range(200)]
    result = dv.self_bleu(texts, n_pairs=300, seed=1)
    assert result["pairs"] == 300 and result["ci_low"] < result["mean"] < result["ci_high"]
    exhaustive = dv.self_bleu(texts[:20], n_pairs=10_000)
    assert exhaustive["pairs"] == 380 and exhaustive["ci_low"] == exhaustive["mean"]


def test_vendi_matches_reference_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    rng = np.random.default_rng(0)
    for n, d in [(50, 8), (30, 64), (200, 16)]:
        x = rng.normal(size=(n, d))
        assert dv.vendi_score(x) == pytest.approx(vendi.score_dual(x), abs=1e-6)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert dv.vendi_score(x) == pytest.approx(vendi.score_K(unit @ unit.T), abs=1e-6)
        # orders q != 1: the package's score_X ignores q (always q=1); score_K honours it, and so do we
        assert dv.vendi_score(x, q=2) == pytest.approx(vendi.score_K(unit @ unit.T, q=2), abs=1e-6)


def test_vendi_and_homogenization_extremes():
    assert dv.vendi_score(np.eye(5)) == pytest.approx(5.0)
    assert dv.vendi_score(np.ones((7, 3))) == pytest.approx(1.0)
    assert dv.homogenization(np.eye(4)) == pytest.approx(0.0)
    assert dv.homogenization(np.ones((4, 3))) == pytest.approx(1.0)
    sixty = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert dv.homogenization(sixty) == pytest.approx(0.5)


def _exact_ngram_vendi(texts):
    vocabulary = {}
    rows = []
    for text in texts:
        row = {}
        for gram in dv.ngrams(dv.tokenize(text), 2):
            column = vocabulary.setdefault(gram, len(vocabulary))
            row[column] = row.get(column, 0) + 1
        rows.append(row)
    exact = np.zeros((len(texts), len(vocabulary)))
    for i, row in enumerate(rows):
        for j, c in row.items():
            exact[i, j] = c
    return dv.vendi_from_features(exact)


def test_ngram_vendi_exact_and_sampled():
    from workbench.tasks import get_task

    corpus = get_task("corpus", n=250)
    real = [f"{p} {r}" for p, r in zip(corpus["prompt"], corpus["reference"])]
    assert dv.ngram_vendi(real) == pytest.approx(_exact_ngram_vendi(real), rel=1e-9)
    # above max_texts: exactly the Vendi of a seeded sample of that size
    sampled = dv.ngram_vendi(real, max_texts=100, seed=4)
    pick = np.sort(np.random.default_rng(4).choice(len(real), size=100, replace=False))
    assert sampled == pytest.approx(_exact_ngram_vendi([real[i] for i in pick]), rel=1e-9)


def test_degenerate_inputs():
    for texts in ([], [""], ["one text only"], ["same"] * 5):
        report = dv.diversity_report(texts)
        assert report["n_texts"] == len(texts)
        assert all(np.isfinite(v) for v in report.values())
    same = dv.diversity_report(["the same words again and again"] * 20, embeddings=np.ones((20, 4)))
    varied = dv.diversity_report([f"text {i} about topic {i * 13} with word{i}" for i in range(20)],
                                 embeddings=np.eye(20))
    assert same["distinct_2"] < varied["distinct_2"] and same["vendi_embedding"] == pytest.approx(1.0)
    assert same["compression_ratio"] > varied["compression_ratio"]
    assert same["self_bleu"] > varied["self_bleu"] and same["homogenization"] > varied["homogenization"]
    with pytest.raises(ValueError, match="embeddings for"):
        dv.diversity_report(["a", "b"], embeddings=np.ones((3, 2)))


text_lists = st.lists(st.text(alphabet="abcde ,.", min_size=0, max_size=40), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(text_lists, st.integers(1, 3))
def test_distinct_n_in_unit_interval_and_duplicates_lower_it(texts, n):
    value = dv.distinct_n(texts, n)
    assert 0.0 <= value <= 1.0
    assert dv.distinct_n(texts + texts, n) <= value + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 10_000))
def test_vendi_between_one_and_n(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    value = dv.vendi_score(x)
    assert 1.0 - 1e-9 <= value <= n + 1e-9
    # adding an exact duplicate of a row never raises diversity above n + 1 - something
    assert dv.vendi_score(np.vstack([x, x[:1]])) <= n + 1 - 1e-6 or n == 0
