"""Fine-tuning on accepted samples (full or LoRA; data-parallel under a launcher). Data mix: workbench/mix.py.

    result = finetune(examples, model="smollm2-135m", config=TrainConfig(epochs=2), out_dir=run_gen_folder)
    result.history      # one row per optimizer step: loss, learning rate, tokens, tokens/s
    result.checkpoint   # <out_dir>/checkpoint, a plain model folder that `load_model` reads

`examples` is a DataFrame with `prompt`, `completion` and `chat` (apply the chat template or continue
raw text). Only completion tokens are trained, and the end-of-turn token *is* trained where the sample
stopped by itself: SmolLM2's pad token is its end-of-turn token, so a collator that masks pad would
teach the model never to stop. Here targets are chosen by position, never by token id.

Why it is fast on a CPU: batches are length-bucketed (rows of similar length, a token budget per
batch, padding reported), rows are right-padded so causal attention needs no mask, and the LM head
and its softmax run only at target positions (prompt positions never reach the 49k-way head).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .errors import InputDataError
from .models import DEFAULT_MODEL, LoadedModel, cpu_has_bf16, load_model
from .progress import progress
from .tracking import with_training

# the data-mix policies live in their own module; `workbench.train.mix` is the name the docs use
from .mix import MIX_POLICIES, mix, parse_mix, real_examples  # noqa: F401,E402


@dataclass
class TrainConfig:
    method: str = "full"                 # SFT on "full" (every weight) or "lora" (low-rank adapters, merged at save);
                                         # "dpo": DPO on preference pairs through TRL (workbench/dpo.py)
    lora: bool = False                   # with method "dpo": train LoRA adapters (reference: the adapter-less base)
    learning_rate: float | None = None   # None: 3e-5 full SFT, 3e-4 LoRA SFT, 5e-6 full DPO, 5e-5 LoRA DPO
    epochs: float = 1.0                  # passes over the examples (fractions allowed)
    max_steps: int | None = None         # cap on optimizer steps (same compute across data-mix policies)
    tokens_per_batch: int = 1024         # token budget of one optimizer step (rows x padded length)
    micro_batch_tokens: int = 256        # forward/backward in pieces of this size (gradient accumulation):
                                         # bounds activation memory (256: 3.5 GB peak, 1024: 4.4 GB but
                                         # ~20% faster, measured); the step's gradient is the same
    max_length: int = 256                # longer examples are cut (prompt kept from its end)
    warmup_steps: int = 2                # linear warm-up, then cosine decay to 10% of the peak
    weight_decay: float = 0.0
    grad_clip: float = 1.0               # max gradient norm (0 disables)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    precision: str = "auto"              # "auto": bf16 autocast on CUDA or a CPU with native bf16, else fp32
    device: str = "auto"                 # "auto": CUDA when present, else CPU
    seed: int = 0                        # batch order
    system_prompt: str | None = None     # must match what generation used for chat prompts
    beta: float = 0.1                    # DPO: pull toward the reference model (higher: stays closer)
    loss_type: str = "sigmoid"           # DPO: TRL's loss_type (sigmoid = DPO; ipo, hinge, robust, ...)
    pairs_per_step: int = 8              # DPO: preference pairs per optimizer step
    pairs_per_micro_batch: int = 2       # DPO: pairs per forward/backward (gradient accumulation bounds memory)

    def check(self) -> None:
        if self.method not in ("full", "lora", "dpo"):
            raise InputDataError(f"TrainConfig.method must be 'full', 'lora' (SFT) or 'dpo', got {self.method!r}.",
                                 "Use method='full' or 'lora' for SFT on accepted samples, 'dpo' (with lora=True "
                                 "for adapters) for preference pairs.")
        if self.method == "dpo" and (self.beta <= 0 or self.pairs_per_step < 1 or self.pairs_per_micro_batch < 1):
            raise InputDataError(f"DPO needs beta > 0 and pairs_per_step, pairs_per_micro_batch >= 1 (got beta "
                                 f"{self.beta}, {self.pairs_per_step}, {self.pairs_per_micro_batch}).",
                                 "E.g. beta=0.1, pairs_per_step=8, pairs_per_micro_batch=2.")
        if self.tokens_per_batch < 16 or self.max_length < 8:
            raise InputDataError("tokens_per_batch and max_length are too small to train.",
                                 "Use tokens_per_batch >= 16 and max_length >= 8 (defaults 1024 and 256).")
        if not (self.epochs > 0 or self.max_steps):
            raise InputDataError(f"epochs must be positive, got {self.epochs}.", "Pass epochs > 0 or max_steps.")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if self.method == "dpo":
            return 5e-5 if self.lora else 5e-6
        return 3e-5 if self.method == "full" else 3e-4


@dataclass
class TrainResult:
    history: pd.DataFrame                # one row per optimizer step
    checkpoint: Path | None              # folder written by save_pretrained (None without out_dir)
    stats: dict = field(default_factory=dict)  # tokens, padding share, seconds, tokens/s, peak RSS
    model: object = None                 # the trained model (merged when LoRA), in eval mode


# ----------------------------------------------------------------------------------- data

def _end_of_turn(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    return vocab["<|im_end|>"] if "<|im_end|>" in vocab else tokenizer.eos_token_id


def tokenize_examples(examples: pd.DataFrame, tokenizer, max_length: int = 256,
                      system_prompt: str | None = None) -> list[tuple[list[int], int]]:
    """Each example -> (token ids, number of leading prompt tokens). Completions get the end-of-turn
    token when the example stopped by itself (finish_reason 'stop', or a chat example without one)."""
    from .models import encode_text

    missing = [c for c in ("prompt", "completion") if c not in examples.columns]
    if missing:
        raise InputDataError(f"Training examples lack column(s) {missing} (have {list(examples.columns)}).",
                             "Pass accepted samples (prompt, completion, chat) or the output of workbench.train.mix.")
    end = _end_of_turn(tokenizer)
    out = []
    for row in examples.to_dict("records"):
        chat = bool(row.get("chat", True))
        completion = row["completion"]
        if not isinstance(completion, str) or not completion.strip():
            continue  # nothing to learn from an empty completion
        prompt_ids = encode_text(tokenizer, str(row["prompt"]), chat, system_prompt)
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        finish = row.get("finish_reason")
        if finish == "stop" or (chat and finish not in ("length",)):
            completion_ids = completion_ids + [end]
        completion_ids = completion_ids[: max_length - 1]
        prompt_ids = prompt_ids[-(max_length - len(completion_ids)):]
        out.append((prompt_ids + completion_ids, len(prompt_ids)))
    return out


def length_buckets(lengths: list[int], tokens_per_batch: int, seed: int = 0) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size fits the token budget;
    batch order shuffled (seeded) so training does not see lengths in sorted order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if current and longest_if_added * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    np.random.default_rng(seed).shuffle(batches)
    return batches


# ----------------------------------------------------------------------------------- model

def _choose_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _autocast_dtype(precision: str, device: str):
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and (device.startswith("cuda") or cpu_has_bf16())):
        return torch.bfloat16
    return None


def _split_head(model):
    """(backbone returning hidden states, LM head) of a causal LM, unwrapping PEFT; None if unknown."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return (backbone, head) if backbone is not None and head is not None else (None, None)


def _batch_loss(model, rows: list[tuple[list[int], int]], device: str, pad_id: int):
    """Mean next-token loss over completion positions of right-padded rows (no attention mask needed:
    pads come after every real token, and attention is causal)."""
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)  # position t predicts token t+1
    for r, (ids, n_prompt) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        target[r, n_prompt - 1: len(ids) - 1] = True
    input_ids, target = input_ids.to(device), target.to(device)
    labels = input_ids[:, 1:][target[:, :-1]]
    backbone, head = _split_head(model)
    if backbone is not None:
        hidden = backbone(input_ids=input_ids).last_hidden_state
        logits = head(hidden[target])
    else:  # unknown layout: full logits (slower, same loss)
        logits = model(input_ids=input_ids).logits[target]
    return F.cross_entropy(logits.float(), labels), int(labels.numel())


def _micro_batches(rows: list, budget: int) -> list[list]:
    """Split a batch (rows of similar length) into pieces whose padded size fits `budget` tokens."""
    pieces, current = [], []
    for row in sorted(rows, key=lambda r: len(r[0])):
        if current and len(row[0]) * (len(current) + 1) > budget:
            pieces.append(current)
            current = []
        current.append(row)
    return pieces + ([current] if current else [])


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress_share = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_share))))


def _distributed(device: str) -> tuple[int, int]:
    """(world size, rank) when launched by `accelerate launch` / torchrun with several processes, else (1, 0)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    if device.startswith("cuda"):  # one GPU per process: "cuda" then means this process's own device
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_world_size(), dist.get_rank()


def _all_reduce_sum(value: float, world: int) -> float:
    if world <= 1:
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total.item())


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def _spec(model: str | LoadedModel) -> str:
    """What to reload a fresh copy from (the caller's model is never trained in place)."""
    if isinstance(model, LoadedModel):
        return model.path if model.info.get("kind") != "embedded" else model.spec
    return model


def _trainable(net, config: TrainConfig, device: str, world: int):
    """The network to optimise: LoRA adapters when asked, wrapped for DDP under several processes."""
    import torch

    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                             target_modules=list(config.lora_targets), task_type="CAUSAL_LM"))
    net.train()
    if world > 1:  # one process per device under `accelerate launch` / torchrun: gradients all-reduced by DDP
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)
    return net


def _accumulate_gradients(net, batch_rows, n_targets: int, config: TrainConfig, device: str, autocast,
                          pad_id: int, rank: int, world: int) -> float:
    """Backpropagate one optimizer step's rows in micro-batches; returns the step's mean target loss.

    Each process takes every world-th row of the step; DDP averages gradients over processes, so losses
    are scaled by `world` to give the gradient of the mean over the whole step. A process left without
    rows backpropagates a zero-weighted row to join the all-reduce."""
    import torch

    mine = batch_rows[rank::world] or batch_rows[:1]
    weight = world if batch_rows[rank::world] else 0.0
    loss_sum = 0.0
    for piece in _micro_batches(mine, config.micro_batch_tokens):
        with torch.autocast(device_type=device.split(":")[0], dtype=autocast, enabled=autocast is not None):
            loss, n_piece = _batch_loss(net, piece, device, pad_id)
        (loss * (weight * n_piece / n_targets)).backward()  # the sum is the step's mean loss
        loss_sum += float(loss.detach()) * n_piece * (weight > 0)
    return float(torch.tensor(_all_reduce_sum(loss_sum, world) / n_targets))


def finetune(examples: pd.DataFrame, model: str | LoadedModel = DEFAULT_MODEL, config: TrainConfig | None = None,
             out_dir: str | os.PathLike | None = None, callback: Callable[[dict], None] | None = None,
             **overrides) -> TrainResult:
    """Fine-tune a fresh copy of `model` on `examples`; write `<out_dir>/checkpoint` atomically.

    The caller's model is never modified (a LoadedModel is reloaded from its folder). `callback(event)`
    runs after every optimizer step with step, total_steps, loss, lr, tokens, tokens_per_s (a widget
    uses it for a live loss plot). Keyword overrides set TrainConfig fields: finetune(df, epochs=2).
    With method="dpo", `examples` are preference pairs (prompt, chosen, rejected: `workbench.select.pairs`)
    and TRL's DPOTrainer trains (workbench/dpo.py); its events add reward_margin, reward_chosen/rejected.
    Inside `workbench.tracking.start(...)` (the loop with a `track:` section, `workbench finetune --track`)
    every step's loss, lr, grad_norm and tokens/s are logged to the tracker as well.
    """
    import torch

    config = config or TrainConfig()
    if overrides:
        config = TrainConfig(**{**asdict(config), **overrides})
    config.check()
    _check_local(model)
    callback = with_training(callback)  # inside `tracking.start` (the loop's track:), each step is logged too
    if config.method == "dpo":
        from .dpo import finetune_dpo

        return finetune_dpo(examples, model, config, out_dir, callback)
    if examples is None or len(examples) == 0:
        raise InputDataError("No training examples: the selection accepted nothing.",
                             "Lower the thresholds (or use a target rate) so some samples are accepted, "
                             "or mix in real data (workbench.train.mix with 'accumulate' or keep_real).")
    device = _choose_device(config.device)
    world, rank = _distributed(device)  # before loading, so each process loads onto its own GPU
    loaded = load_model(_spec(model), dtype="fp32", device=device)  # master weights in fp32; autocast below
    rows = tokenize_examples(examples, loaded.tokenizer, config.max_length, config.system_prompt)
    if not rows:
        raise InputDataError("Every training example has an empty completion.", "Check the accepted samples.")
    torch.manual_seed(config.seed)  # LoRA's initial adapters come from it
    net = _trainable(loaded.model, config, device, world)
    history, totals = _optimize(net, rows, loaded.tokenizer.pad_token_id, config, device, rank, world, callback)
    if world > 1:
        net = net.module
    if config.method == "lora":
        net = net.merge_and_unload()
    net.eval()
    autocast = _autocast_dtype(config.precision, device)
    padded = totals.pop("padded_tokens")
    stats = {"method": config.method, "examples": len(rows), **totals,
             "padding_share": 1 - totals["real_tokens"] / max(padded, 1),
             "real_tokens_per_s": totals["real_tokens"] / max(totals["seconds"], 1e-9), "peak_rss_gb": _peak_rss_gb(),
             "device": device, "precision": "bf16-autocast" if autocast is not None else "fp32",
             "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"], "base_model": loaded.name,
             "processes": world,
             "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}}
    return _finish(net, loaded.tokenizer, pd.DataFrame(history), stats, out_dir, rank, world)


def _check_local(model) -> None:
    """Training needs weights on this machine: a backend (an OpenAI-compatible server, llama.cpp) has none."""
    from .backends import is_backend_spec

    if is_backend_spec(model):
        raise InputDataError(f"Cannot fine-tune {model!r}: it is a backend (a served model), and training needs "
                             "local weights.", "Fine-tune a local model folder or an embedded/hub model id "
                             "(e.g. smollm2-135m), then serve the result if you like.")


def _optimize(net, rows, pad_id: int, config: TrainConfig, device: str, rank: int, world: int,
              callback) -> tuple[list[dict], dict]:
    """The SFT optimizer loop: length-bucketed steps, warm-up + cosine LR, clipping; (history, totals)."""
    import torch

    trainable = [p for p in net.parameters() if p.requires_grad]
    fused = {"fused": True} if device == "cpu" or device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, **fused)
    autocast = _autocast_dtype(config.precision, device)
    lengths = [len(ids) for ids, _ in rows]
    total = max(1, math.ceil(len(length_buckets(lengths, config.tokens_per_batch)) * config.epochs))
    if config.max_steps:
        total = min(total, config.max_steps) if config.epochs else config.max_steps
    history, step, epoch, started = [], 0, 0, time.perf_counter()
    totals = {"steps": total, "real_tokens": 0, "padded_tokens": 0, "target_tokens": 0}
    with progress(total, f"fine-tune ({config.method})", unit="steps") as bar:
        while step < total:
            for batch in length_buckets(lengths, config.tokens_per_batch, seed=config.seed + epoch):
                if step >= total:
                    break
                batch_rows = [rows[i] for i in batch]
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total, config.lr, config.warmup_steps)
                n_targets = sum(len(ids) - n_prompt for ids, n_prompt in batch_rows)
                loss = _accumulate_gradients(net, batch_rows, n_targets, config, device, autocast, pad_id, rank, world)
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip))
                             if config.grad_clip else float("nan"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                real = sum(len(r[0]) for r in batch_rows)
                totals["real_tokens"] += real
                totals["padded_tokens"] += max(len(r[0]) for r in batch_rows) * len(batch_rows)
                totals["target_tokens"] += n_targets
                elapsed = time.perf_counter() - started
                event = {"step": step + 1, "total_steps": total, "epoch": epoch, "loss": loss,
                         "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "rows": len(batch_rows),
                         "tokens": real, "target_tokens": n_targets, "seconds": elapsed,
                         "tokens_per_s": totals["real_tokens"] / max(elapsed, 1e-9)}
                history.append(event)
                bar.update(1, tokens=real)
                if callback is not None:
                    callback(event)
                step += 1
            epoch += 1
    return history, {**totals, "epochs_run": epoch, "seconds": time.perf_counter() - started}


def _finish(net, tokenizer, history: pd.DataFrame, stats: dict, out_dir, rank: int, world: int) -> TrainResult:
    """Write the checkpoint (one process writes; the others wait for it) and wrap up the result."""
    import torch

    checkpoint = None
    if out_dir and rank == 0:  # every process holds the same weights; one writes them
        checkpoint = save_checkpoint(net, tokenizer, Path(out_dir), history, stats)
    if world > 1:
        torch.distributed.barrier()  # the others return once the checkpoint is in place
        checkpoint = Path(out_dir) / "checkpoint" if out_dir else None
    return TrainResult(history=history, checkpoint=checkpoint, stats=stats, model=net)


def save_checkpoint(net, tokenizer, out_dir: Path, history: pd.DataFrame, stats: dict) -> Path:
    """Write <out_dir>/checkpoint via a temporary folder and one rename: a kill leaves all or nothing."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # a bar per shard of a ~0.5 GB save is noise in logs
    final = out_dir / "checkpoint"
    tmp = out_dir / f".checkpoint.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp)
    history.to_json(tmp / "train_history.jsonl", orient="records", lines=True)
    (tmp / "train_stats.json").write_text(json.dumps(stats, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
