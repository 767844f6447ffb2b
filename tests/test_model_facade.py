"""The LoadedModel facade: its fast-engine path and its transformers path give the same numbers,
`encode` is what generation uses, and the KV-cache size per token is the hand formula."""
import dataclasses

import numpy as np
import pytest
import torch

from workbench.sampling import encode_prompt, generate

TEXTS = ["What is 12+7?", "Write a haiku about the sea.", "Hi"]


@pytest.fixture
def hf_only(tiny, monkeypatch):
    """The tiny model with the fast engine ruled out, so the facade takes its transformers path."""
    assert tiny.engine is not None  # built before the patch: the session's `tiny` keeps its engine
    monkeypatch.setattr("workbench.engine.supports", lambda model: False)
    return dataclasses.replace(tiny)  # a fresh engine cache over the same weights


def _sequences(loaded):
    return [loaded.encode(t, chat=True) for t in TEXTS] + [loaded.encode(TEXTS[0], chat=False)]


def test_engine_is_chosen_once_per_quantize(tiny):
    assert tiny.engine is not None and tiny.engine is tiny.fast_engine()
    assert tiny.fast_engine("int8") is tiny.fast_engine("int8") is not tiny.engine


def test_engine_and_transformers_paths_agree(tiny, hf_only):
    assert hf_only.engine is None and tiny.engine is not None
    sequences = _sequences(tiny)
    starts = [len(seq) - 4 for seq in sequences[:-1]] + [0]  # 0: scored from the second token on
    fast, slow = tiny.token_logprobs(sequences, starts, batch_size=2), hf_only.token_logprobs(sequences, starts)
    assert [len(lp) for lp in fast] == [len(lp) for lp in slow] == [4, 4, 4, len(sequences[-1]) - 1]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, atol=2e-4)
    assert tiny.token_logprobs([sequences[0]], [len(sequences[0])])[0].size == 0
    assert hf_only.token_logprobs([sequences[0]], [len(sequences[0])])[0].size == 0
    # the chat prompts share the template's system turn: the engine runs it once, and must still agree
    fast_logits = tiny.next_token_logits(sequences[:-1], batch_size=2)
    slow_logits = hf_only.next_token_logits(sequences[:-1], batch_size=2)
    assert fast_logits.shape == (3, tiny.model.config.vocab_size)
    assert torch.allclose(fast_logits, slow_logits, atol=2e-4, rtol=1e-4), (fast_logits - slow_logits).abs().max()


def test_progress_callback_counts_every_sequence(tiny, hf_only):
    sequences = _sequences(tiny)
    for loaded in (tiny, hf_only):
        seen = []
        loaded.token_logprobs(sequences, [1] * len(sequences), batch_size=3, on_batch=seen.append)
        loaded.next_token_logits(sequences, batch_size=3, on_batch=seen.append)
        assert sum(seen) == 2 * len(sequences)


def test_encode_is_what_generation_uses(tiny):
    for chat, system in ((True, None), (True, "Be brief."), (False, None)):
        assert tiny.encode(TEXTS[1], chat, system) == encode_prompt(tiny.tokenizer, TEXTS[1], chat, system)
    samples = tiny.generate(TEXTS, max_new_tokens=2, temperature=0.0, system_prompt="Be brief.")
    assert list(samples["n_prompt_tokens"]) == [len(tiny.encode(t, True, "Be brief.")) for t in TEXTS]
    again = generate(TEXTS, model=tiny, max_new_tokens=2, temperature=0.0, system_prompt="Be brief.")
    assert list(again["completion"]) == list(samples["completion"])


def test_kv_bytes_per_token_is_the_hand_formula(tiny):
    cfg = tiny.model.config  # conftest: 2 layers, 2 KV heads of 16 dims, fp32
    assert tiny.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 4 == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads \
        * (cfg.hidden_size // cfg.num_attention_heads) * 4
    engine = tiny.engine  # what the engine's cache really holds per token
    assert tiny.kv_bytes_per_token() == 2 * len(engine.layers) * engine.n_kv * engine.head_dim \
        * torch.finfo(engine.dtype).bits // 8


def test_real_token_logprobs_match_a_plain_forward(real):
    texts = ["The capital of France is Paris.", "Two plus two is four, said the teacher."]
    sequences = [real.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert real.engine is not None
    for seq, logprobs in zip(sequences, real.token_logprobs(sequences, [1, 1])):
        with torch.no_grad():
            logits = real.model(torch.tensor([seq])).logits[0, :-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()
        np.testing.assert_allclose(logprobs, expected, atol=2e-4)
