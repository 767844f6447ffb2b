"""Shared fixtures: a tiny random-weight Llama built from SmolLM2's config (fast unit tests) and the
real embedded model (integration tests; provisioned by `make models`, which `make test` runs first)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WORKBENCH_PROGRESS", "lines")


@pytest.fixture(scope="session")
def real_model_dir():
    from workbench.models import pull

    return pull("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_model_dir):
    """SmolLM2's architecture and tokenizer, shrunk to 2 layers of width 64, random weights (seed 0)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(real_model_dir)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=256))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharpen the output distribution so sampled texts stop sometimes
        model.lm_head.weight.mul_(4.0) if not config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(4.0)
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(real_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from workbench.models import load_model

    return load_model(str(tiny_model_dir), dtype="fp32")


@pytest.fixture(scope="session")
def real(real_model_dir):
    from workbench.models import load_model

    return load_model("smollm2-135m", dtype="fp32")
