"""The int8 quality gate: `generate(quantize="int8")` runs int8 matmuls only where they keep the model's
likelihood of real held-out text.

int8 (W8A8 with a scale per weight row and per token, `matmul._Int8Weight`, VNNI on x86) generates faster than
fp32 on a CPU, at a cost in quality that depends on the model: on SmolLM2-135M the mean negative log-likelihood
of held-out corpus passages rose by 1.7% (README: Speed). The gate measures that cost once per loaded model, on
`PASSAGES` held-out passages of the `corpus` task through the same scoring pass as the held-out evaluation, and
refuses int8 where the mean NLL rises by more than `max_increase` (relative), saying by how much it rose.

    quality = int8_quality(loaded)   # {"nll": 3.05, "nll_int8": 3.10, "relative_increase": 0.017, ...}
"""
from __future__ import annotations

import numpy as np

from .errors import InputDataError

MAX_NLL_INCREASE = 0.03   # relative rise of the held-out mean NLL that int8 may cost (SmolLM2-135M: ~0.017)
PASSAGES = 32             # held-out corpus passages the gate scores, each cut to MAX_TOKENS tokens
MAX_TOKENS = 128


def int8_quality(loaded, passages: int = PASSAGES, max_tokens: int = MAX_TOKENS) -> dict:
    """Mean NLL (nats/token) of held-out passages under `loaded` as loaded and under its int8 engine, the relative
    increase, and the share of tokens whose log-probability moved by more than 0.1 nats. Cached on `loaded`."""
    from .tasks import get_task

    key = ("int8_quality", passages, max_tokens)
    cache = loaded._measurements  # kept on the loaded model: the measurement lives and dies with it
    if key not in cache:
        heldout = get_task("corpus", n=passages, split="heldout")
        texts = (heldout["prompt"] + " " + heldout["reference"]).tolist()
        sequences = [ids[:max_tokens] for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        sequences = [ids for ids in sequences if len(ids) >= 2]
        reference = np.concatenate(loaded.token_logprobs(sequences, [1] * len(sequences)))
        int8 = np.concatenate(loaded.token_logprobs(sequences, [1] * len(sequences), quantize="int8"))
        nll, nll_int8 = float(-reference.mean()), float(-int8.mean())
        cache[key] = {"passages": len(sequences), "tokens": int(reference.size), "dtype": loaded.dtype,
                      "nll": round(nll, 5), "nll_int8": round(nll_int8, 5),
                      "relative_increase": round((nll_int8 - nll) / nll, 5),
                      "tokens_moved_over_0.1_nats": round(float((np.abs(int8 - reference) > 0.1).mean()), 4)}
    return dict(cache[key])


def check_int8(loaded, max_increase: float = MAX_NLL_INCREASE) -> dict:
    """`int8_quality(loaded)` when its relative NLL increase is at most `max_increase`; else InputDataError."""
    if loaded.fast_engine("int8") is None:
        raise InputDataError("quantize='int8' needs the fast engine.", "Drop quantize, or use a Llama-family model.")
    quality = int8_quality(loaded)
    if not quality["relative_increase"] <= max_increase:  # NaN fails too
        raise InputDataError(
            f"int8 fails the quality gate for {loaded.name}: the mean NLL of {quality['passages']} held-out passages "
            f"rose from {quality['nll']:.4f} to {quality['nll_int8']:.4f} nats/token "
            f"(+{100 * quality['relative_increase']:.1f}%, limit +{100 * max_increase:.1f}%).",
            "Generate without quantize (full precision), or accept the loss explicitly with a higher "
            "int8_max_nll_increase.")
    return quality
