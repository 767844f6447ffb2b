"""Preference learning: DPO (Rafailov et al. 2023) through TRL's `DPOTrainer`, behind `workbench.train.finetune`.

    result = finetune(pairs_frame, model, method="dpo", beta=0.1)          # full fine-tune
    result = finetune(pairs_frame, model, method="dpo", lora=True)         # LoRA adapters, merged at save
    result.history    # per optimizer step: loss, reward margin, chosen/rejected rewards, tokens/s

`pairs_frame` is TRL's preference table (prompt / chosen / rejected, as `workbench.select.pairs` makes it;
chat rows become conversational messages). TRL owns the loss, the reference model (full: a frozen copy of the
starting model; LoRA: the same network with its adapters disabled, so no second copy) and multi-process
training (`accelerate launch` works unchanged). The workbench keeps what the SFT path does around it: a fresh
copy of the model (the caller's is never trained), the progress helper and the training panel's callback,
tracking, and an atomic checkpoint (`train.save_checkpoint`) that `load_model` reads.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict

import pandas as pd

from .errors import InputDataError
from .pairs import check_pairs, trl_records
from .progress import progress, quiet_datasets

# TRL's per-step log keys -> the names of the workbench's events (and the training panel's traces)
LOG_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "rewards/margins": "reward_margin",
            "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
            "rewards/accuracies": "reward_accuracy", "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected"}


def _trainer_callback(total: int, bar, callback, started: float):
    """A transformers TrainerCallback that turns TRL's per-step logs into the workbench's step events."""
    from transformers import TrainerCallback

    class StepEvents(TrainerCallback):
        def __init__(self):
            self.history, self.tokens_seen = [], 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return  # the closing summary (train_runtime, ...) has no loss
            tokens = int(logs.get("num_tokens", self.tokens_seen))  # non-padding chosen + rejected tokens so far
            elapsed = time.perf_counter() - started
            event = {"step": int(state.global_step), "total_steps": total, "epoch": logs.get("epoch"),
                     **{ours: float(logs[theirs]) for theirs, ours in LOG_KEYS.items() if theirs in logs},
                     "tokens": tokens - self.tokens_seen, "seconds": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9)}
            self.tokens_seen = tokens
            self.history.append(event)
            bar.update(1, tokens=event["tokens"])
            if callback is not None:
                callback(event)

    return StepEvents()


def dpo_args(config, n_pairs: int, device: str, autocast, world: int, output_dir: str):
    """TRL's DPOConfig from the workbench's TrainConfig (steps, schedule, precision, DPO's beta and loss)."""
    from trl import DPOConfig

    micro = max(1, min(config.pairs_per_micro_batch, config.pairs_per_step))
    accumulation = max(1, math.ceil(config.pairs_per_step / (micro * world)))
    per_epoch = max(1, math.ceil(n_pairs / (micro * accumulation * world)))
    total = max(1, math.ceil(per_epoch * config.epochs)) if config.epochs else config.max_steps
    if config.max_steps:
        total = min(total, config.max_steps)
    # the SFT path's schedule: warm-up, then cosine to 10% of the peak. HF's warm-up starts at lr 0, a lost step,
    # so a short run (a few steps) gets none
    warmup = config.warmup_steps if total >= 4 * config.warmup_steps else 0
    values = dict(
        output_dir=output_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        max_steps=total, learning_rate=config.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=warmup,
        weight_decay=config.weight_decay, max_grad_norm=config.grad_clip or 1e9, beta=config.beta,
        loss_type=[config.loss_type], max_length=config.max_length, seed=config.seed, data_seed=config.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=device == "cpu", bf16=autocast is not None, fp16=False, gradient_checkpointing=False)
    with warnings.catch_warnings():  # transformers 5 renamed gradient_checkpointing, which TRL's config still sets
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return DPOConfig(**values), total


def finetune_dpo(pairs_frame: pd.DataFrame, model, config, out_dir=None, callback=None):
    """DPO on `pairs_frame` (see the module docstring); returns a `train.TrainResult`. Called by
    `train.finetune` when `config.method == "dpo"`."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    from .models import load_model
    from .train import _autocast_dtype, _choose_device, _finish, _peak_rss_gb, _spec

    check_pairs(pairs_frame, "DPO's training data")
    if len(pairs_frame) == 0:
        raise InputDataError("No preference pairs to train on.",
                             "Build pairs with workbench.select.pairs(graded, by=...) from samples with several "
                             "answers per prompt (n_per_prompt >= 2) whose scores differ.")
    device = _choose_device(config.device)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    loaded = load_model(_spec(model), dtype="fp32", device="cpu" if world > 1 else device)  # Trainer places it
    dataset = datasets.Dataset.from_list(trl_records(pairs_frame))
    autocast = _autocast_dtype(config.precision, device)
    scratch = tempfile.mkdtemp(prefix="workbench-dpo-")  # TRL wants an output_dir; nothing is saved there
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
    torch.manual_seed(config.seed)
    args, total = dpo_args(config, len(dataset), device, autocast, world, scratch)
    started = time.perf_counter()
    try:
        with progress(total, f"fine-tune (dpo{', lora' if config.lora else ''})", unit="steps") as bar, \
                quiet_datasets(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            events = _trainer_callback(total, bar, callback, started)
            trainer = DPOTrainer(model=loaded.model, ref_model=None, args=args, train_dataset=dataset,
                                 processing_class=loaded.tokenizer, peft_config=peft_config, callbacks=[events])
            trainer.remove_callback(PrinterCallback)  # our progress helper reports; no raw dict per step
            trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    net = trainer.accelerator.unwrap_model(trainer.model)
    if config.lora:
        net = net.merge_and_unload()
    net.eval()
    history = pd.DataFrame(events.history)
    tokens = int(history["tokens"].sum()) if len(history) else 0
    last = events.history[-1] if events.history else {}
    stats = {"method": "dpo", "lora": bool(config.lora), "examples": len(dataset), "pairs": len(dataset),
             "steps": total, "epochs_run": float(last.get("epoch") or 0.0), "real_tokens": tokens,
             "target_tokens": None, "padding_share": None, "seconds": seconds,
             "real_tokens_per_s": tokens / max(seconds, 1e-9), "peak_rss_gb": _peak_rss_gb(), "device": device,
             "precision": "bf16-autocast" if autocast is not None else "fp32",
             "first_loss": events.history[0]["loss"] if events.history else None, "last_loss": last.get("loss"),
             "reward_margin": last.get("reward_margin"), "reward_accuracy": last.get("reward_accuracy"),
             "reward_chosen": last.get("reward_chosen"), "reward_rejected": last.get("reward_rejected"),
             "base_model": loaded.name, "processes": world, "trainer": "trl.DPOTrainer",
             "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}}
    return _finish(net, loaded.tokenizer, history, stats, out_dir, rank, world)

