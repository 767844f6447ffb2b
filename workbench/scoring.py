"""The fast engine's scoring passes: one forward over whole sequences, no sampling. `next_token_logits`
(a judge's verdict token), `token_logprobs` (perplexity, the self-judge's and the perplexity grader's
scores) and `token_statistics` (self-certainty). Sequences run in batches of similar length, packed end to
end without padding where the engine has its compiled attention kernel (`LlamaEngine.forward_packed`; else
right-padded, with SDPA), and the scored positions of a batch go through the LM head together with
log p = logit - logsumexp(logits), so no [positions, vocab] log-softmax is written (README: Speed). Packing
took the bench's self-judge from 4.1x to 5.3x naive transformers and its perplexity pass from 3.1x to 3.5x.
"""
from __future__ import annotations

import numpy as np
import torch

from . import kernels
from .engine import LlamaEngine, left_padded, right_padded  # noqa: F401 (LlamaEngine: annotations)


@torch.inference_mode()
def next_token_logits(engine: LlamaEngine, sequences: list[list[int]], batch_size: int = 32,
                      on_batch=None) -> torch.Tensor:
    """Logits [len(sequences), vocab] of the token after each sequence."""
    P, prefix = engine.common_prefix(sequences)
    packed = engine.packs(max(len(seq) for seq in sequences) - P)
    lengths = [len(seq) - P for seq in sequences]  # similar lengths share a batch
    batches = _packed_batches(lengths) if packed else _length_batches(lengths, batch_size)
    out = []
    for index in batches:
        if packed:  # end to end, no padding: each sequence's last token
            hidden = engine.forward_packed([sequences[i][P:] for i in index], P, prefix)
            last = torch.tensor([len(sequences[i]) - P for i in index]).cumsum(0) - 1
            out.append(engine.logits(hidden[last]))
        else:
            tokens, lengths = right_padded([sequences[i] for i in index], P)
            out.append(engine.logits(engine.prefill(tokens, lengths, prefix=prefix)))
        if on_batch:
            on_batch(len(index))
    logits = torch.cat(out)
    order = [i for index in batches for i in index]
    return logits[torch.argsort(torch.tensor(order))]


# rows of logits [rows, vocab] per LM-head chunk: small enough that the logits (128 x 49152 fp32: 25 MB) are still
# in cache when logsumexp and gather read them. 10,240 positions of SmolLM2 (fp32, 2 cores), LM head + logsumexp +
# gather: 2.96 s in chunks of 1,024 rows (200 MB of logits each), 2.24 s in chunks of 128, 2.56 s in chunks of 64
SCORE_CHUNK = 128


# tokens per packed batch (`forward_packed`): packed, a batch costs its real tokens alone, so the scoring passes
# fill batches to this many tokens whatever their `batch_size` (which sizes the padded batches). Larger batches
# run the matmuls faster: the bench's 128 held-out passages (bf16, AMX machine) in batches of 8 sequences (~640
# tokens) 5.0-5.3 s, of 64 (~5,100) 4.1 s; fp32 within noise (12.8-13.3 s)
PACKED_BATCH_TOKENS = 4096


def _packed_batches(lengths: list[int], max_tokens: int | None = None) -> list[list[int]]:
    """Indices of the sequences with these lengths in batches of at most `max_tokens` (PACKED_BATCH_TOKENS)
    tokens (a longer sequence alone), sorted by length as `_length_batches` sorts them, for packed passes."""
    max_tokens = max_tokens or PACKED_BATCH_TOKENS
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    tokens = 0
    for i in order:
        if batches and tokens + lengths[i] <= max_tokens:
            batches[-1].append(i)
            tokens += lengths[i]
        else:
            batches.append([i])
            tokens = lengths[i]
    return batches


def _length_batches(lengths: list[int], batch_size: int, slack: float = 0.25, min_slack: int = 64) -> list[list[int]]:
    """Indices of the sequences with these lengths in batches for right-padded forwards: sorted by length
    (stable), at most `batch_size` a batch, and a batch ends early where the next sequence would make its padding
    exceed max(slack x its real tokens, min_slack): a long outlier then pads no batch of short sequences (with
    fixed batches of 32 the held-out corpus ran 2.1x its real positions, with these 1.16x)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    real = 0
    for i in order:
        n = lengths[i]  # the longest so far: the batch's width once i joins it
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * n - (real + n) <= max(slack * (real + n), min_slack):
            batches[-1].append(i)
            real += n
        else:
            batches.append([i])
            real = n
    return batches


def _score(engine: LlamaEngine, sequences: list[list[int]], score_from: list[int], batch_size: int, on_batch,
           statistics: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The scoring pass behind `token_logprobs` and `token_statistics`: per sequence (in the given order), the
    log-probabilities of its tokens from max(score_from, 1) on, and with `statistics` the mean log-probability
    over the vocabulary at those positions (else None); float32 arrays, float64 empty ones where nothing is
    scored. Sequences run in batches of similar length (`_length_batches`); the scored positions of a batch go
    through the LM head together, `SCORE_CHUNK` rows at a time, and log p = logit - logsumexp(logits), so no
    [rows, vocab] log-softmax is written. `on_batch(n)` after every batch of n sequences."""
    out: list = [None] * len(sequences)
    packed = bool(sequences) and min(map(len, sequences)) > 0 and engine.packs(max(map(len, sequences)))
    lengths = [len(seq) for seq in sequences]
    for index in _packed_batches(lengths) if packed else _length_batches(lengths, batch_size):
        batch = [sequences[i] for i in index]
        if packed:  # end to end, no padding: sequence j starts at row offsets[j]
            hidden = engine.forward_packed(batch)                                   # [total tokens, hidden]
            tokens = torch.tensor([token for seq in batch for token in seq])
            offsets = np.cumsum([0] + [len(seq) for seq in batch[:-1]])
        else:
            tokens, lengths = right_padded(batch)
            hidden = engine.prefill(tokens, lengths, all_positions=True)           # [B, T, hidden]
            offsets = np.arange(len(batch)) * tokens.shape[1]
            hidden, tokens = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)
        # flat positions (offset + t) whose hidden state predicts a scored token: t in [first - 1, len - 1)
        positions, counts = [], []
        for offset, i, seq in zip(offsets.tolist(), index, batch):
            first = max(score_from[i], 1)  # the first token has no prediction
            count = max(len(seq) - first, 0)
            positions.append(torch.arange(offset + first - 1, offset + first - 1 + count))
            counts.append(count)
        flat = torch.cat(positions)
        chosen = torch.empty(len(flat), dtype=torch.float32)
        mean = torch.empty(len(flat), dtype=torch.float32) if statistics else None
        if len(flat):
            states = hidden[flat]
            targets = tokens[flat + 1]
            compiled = kernels.available() and engine.dtype in kernels.DTYPES  # the kernel reads bf16 logits too
            for c in range(0, len(flat), SCORE_CHUNK):
                logits = engine.logits(states[c:c + SCORE_CHUNK], float32=not compiled)  # [rows, vocab]
                if compiled:  # logsumexp, the target's logit and the mean in two passes over each row
                    kernels.token_logprobs(logits, targets[c:c + SCORE_CHUNK], chosen[c:c + SCORE_CHUNK],
                                           mean[c:c + SCORE_CHUNK] if statistics else None)
                    continue
                lse = torch.logsumexp(logits, dim=-1)
                chosen[c:c + SCORE_CHUNK] = logits.gather(-1, targets[c:c + SCORE_CHUNK, None])[:, 0] - lse
                if statistics:
                    mean[c:c + SCORE_CHUNK] = logits.mean(-1) - lse
        for i, count, logp, avg in zip(index, counts, chosen.split(counts),
                                       mean.split(counts) if statistics else [None] * len(counts)):
            if not count:
                out[i] = (np.zeros(0), np.zeros(0) if statistics else None)
            else:
                out[i] = (logp.numpy(), avg.numpy() if statistics else None)
        if on_batch:
            on_batch(len(batch))
    return out


@torch.inference_mode()
def token_logprobs(engine: LlamaEngine, sequences: list[list[int]], score_from: list[int], batch_size: int = 8,
                   on_batch=None) -> list[np.ndarray]:
    """For each sequence, log p(token_t | tokens_<t) for t in [score_from, len): the completion's tokens."""
    return [chosen for chosen, _ in _score(engine, sequences, score_from, batch_size, on_batch, False)]


@torch.inference_mode()
def token_statistics(engine: LlamaEngine, sequences: list[list[int]], score_from: list[int], batch_size: int = 8,
                     on_batch=None) -> list[dict]:
    """For each sequence and each position t in [score_from, len): "logprob", log p(token_t | tokens_<t), and
    "mean_logprob", the mean of log p(v | tokens_<t) over the whole vocabulary (what self-certainty needs:
    KL(uniform || p) = -log V - mean_logprob). Both from the same forward pass as `token_logprobs`."""
    return [{"logprob": chosen, "mean_logprob": mean}
            for chosen, mean in _score(engine, sequences, score_from, batch_size, on_batch, True)]
