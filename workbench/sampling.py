"""Generate synthetic samples: prompts DataFrame in, one row per sample out, optionally into a run.

    samples = workbench.generate(get_task("arithmetic", n=32), model="smollm2-135m", n_per_prompt=4)

Each row has a `sample_id` that hashes (model, prompt, sampling params, seed, index): the same call
gives the same ids (and, with the fast engine, the same text), and a rerun into the same run folder
only generates the ids that are not there yet.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Iterator

import pandas as pd

from .errors import InputDataError
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .progress import progress

# columns every samples table has, in this order (task-specific prompt columns follow)
SAMPLE_COLUMNS = ["sample_id", "prompt_id", "sample_index", "prompt", "completion", "n_prompt_tokens",
                  "n_completion_tokens", "finish_reason", "prompt_truncated", "model", "seed", "sample_seed", "temperature",
                  "top_p", "top_k", "max_new_tokens", "system_prompt", "dtype", "quantize", "engine"]
# the order of a samples table's columns: SAMPLE_COLUMNS with `min_p` (present only when min-p was on) after top_k
_COLUMN_ORDER = SAMPLE_COLUMNS[:SAMPLE_COLUMNS.index("top_k") + 1] + ["min_p"] + \
    SAMPLE_COLUMNS[SAMPLE_COLUMNS.index("top_k") + 1:]

CHECKPOINT_EVERY = 128  # finished samples per part written to a run: 2 x batch_size where one is given, else this
HF_BATCH_SIZE = 32      # transformers' generate: rows per left-padded batch, unless the caller says otherwise


@dataclass
class SamplingParams:
    n_per_prompt: int = 1           # samples per prompt (K for best-of-K and RAFT-style selection)
    temperature: float = 0.8        # 0 = greedy
    top_p: float = 0.95             # nucleus sampling mass; 1.0 disables it
    top_k: int = 50                 # 0 disables it (SmolLM2's own generation config uses 50)
    min_p: float = 0.0              # keep tokens with probability >= min_p x the top token's; 0 disables it
    max_new_tokens: int = 128       # completion budget per sample
    seed: int = 0                   # base seed; each sample's seed derives from it, the prompt and its index
    system_prompt: str | None = None  # None: the chat template's default system prompt

    def check(self) -> None:
        if self.max_new_tokens <= 0:
            raise InputDataError(f"max_new_tokens must be positive, got {self.max_new_tokens}.",
                                 "Pass max_new_tokens >= 1 (e.g. 128).")
        if self.n_per_prompt <= 0:
            raise InputDataError(f"n_per_prompt must be positive, got {self.n_per_prompt}.", "Pass n_per_prompt >= 1.")
        if self.temperature < 0:
            raise InputDataError(f"temperature must be >= 0, got {self.temperature}.", "Use 0 for greedy decoding.")
        if not 0 < self.top_p <= 1:
            raise InputDataError(f"top_p must be in (0, 1], got {self.top_p}.", "Use 1.0 to disable nucleus sampling.")
        if self.top_k < 0:
            raise InputDataError(f"top_k must be >= 0, got {self.top_k}.", "Use 0 to disable top-k.")
        if not 0 <= self.min_p < 1:
            raise InputDataError(f"min_p must be in [0, 1), got {self.min_p}.",
                                 "Use 0 to disable min-p (typical values: 0.02-0.2).")

    def recorded(self) -> dict:
        """The params as a run's config records them: min_p only when set, so runs made before min-p existed
        (and their configs) still match a call that leaves it at 0."""
        values = asdict(self)
        if not self.min_p:
            del values["min_p"]
        return values


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


def as_prompts(prompts) -> pd.DataFrame:
    """Accept a prompts DataFrame, a list of strings, or a task name / prompts file path."""
    if isinstance(prompts, str):
        from .tasks import get_task

        prompts = get_task(prompts)
    if isinstance(prompts, (list, tuple)):
        prompts = pd.DataFrame({"prompt": list(prompts)})
        prompts["prompt_id"] = [f"p-{_hash(p)[:12]}-{i}" for i, p in enumerate(prompts["prompt"])]
    if not isinstance(prompts, pd.DataFrame):
        raise InputDataError(f"prompts must be a DataFrame, a list of strings or a task name, not {type(prompts)}.",
                             "Build prompts with workbench.tasks.get_task(...).")
    if len(prompts) == 0:
        raise InputDataError("There are zero prompts to generate from.",
                             "Check the task parameters (n) or the prompts file: it must have at least one row.")
    if "prompt" not in prompts.columns:
        raise InputDataError(f"The prompts have no 'prompt' column (columns: {list(prompts.columns)}).",
                             "Rename the column holding the prompts to 'prompt'.")
    prompts = prompts.reset_index(drop=True).copy()
    if "prompt_id" not in prompts.columns:
        prompts["prompt_id"] = [f"p-{_hash(p)[:12]}-{i}" for i, p in enumerate(prompts["prompt"])]
    if prompts["prompt_id"].duplicated().any():
        raise InputDataError(f"prompt_id {prompts.loc[prompts['prompt_id'].duplicated(), 'prompt_id'].iloc[0]!r} "
                             "appears twice.", "Give every prompt a unique prompt_id.")
    if "chat" not in prompts.columns:
        prompts["chat"] = True
    return prompts


def stop_token_ids(tokenizer, model) -> list[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return sorted(ids)


def encode_prompt(tokenizer, text: str, chat: bool, system_prompt: str | None) -> list[int]:
    """`LoadedModel.encode` for callers that hold only a tokenizer (tests, benchmarks)."""
    from .models import encode_text

    return encode_text(tokenizer, text, chat, system_prompt)


def _checkpoint_every(batch_size: int | None) -> int:
    return 2 * batch_size if batch_size else CHECKPOINT_EVERY


def _hf_generate(loaded: LoadedModel, requests, stop_ids, params: SamplingParams, batch_size: int):
    """Fallback for architectures the fast engine does not cover: HF `generate`, left-padded batches."""
    import torch

    from .engine import Finished, left_padded

    tokenizer, model = loaded.tokenizer, loaded.model
    pad = tokenizer.pad_token_id
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        ids, mask = left_padded([r.prompt_ids for r in batch], pad)
        width = ids.shape[1]
        torch.manual_seed(batch[0].seed % (2 ** 63))
        sampling = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k) \
            if params.temperature > 0 else dict(do_sample=False)
        if params.temperature > 0 and params.min_p > 0:
            sampling["min_p"] = params.min_p
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=batch[0].max_new_tokens,
                                 pad_token_id=pad, eos_token_id=stop_ids, **sampling)
        for row, r in enumerate(batch):
            tokens = out[row, width:].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
            yield Finished(r.key, tokens[:cut] if cut is not None else tokens[: r.max_new_tokens],
                           "stop" if cut is not None else "length")


def generate(prompts, model: str | LoadedModel = DEFAULT_MODEL, n_per_prompt: int = 1, temperature: float = 0.8,
             top_p: float = 0.95, top_k: int = 50, min_p: float = 0.0, max_new_tokens: int = 128,
             seed: int = 0, system_prompt: str | None = None, batch_size: int | None = None, run=None, generation: int = 0,
             checkpoint_every: int | None = None, dtype: str = "auto", quantize: str | None = None,
             engine: str = "auto", max_cache_bytes: int | None = None, shard: tuple[int, int] | None = None,
             int8_max_nll_increase: float = 0.03) -> pd.DataFrame:
    """Sample `n_per_prompt` completions per prompt; return a DataFrame with SAMPLE_COLUMNS + prompt columns.

    run: a `workbench.Run` (or path): rows are checkpointed into `gen-XXX/samples/` every
    `checkpoint_every` finished samples (default: 2 x batch_size, or 128) and already-present samples are skipped.
    batch_size: sequences decoded together. None (the default): the fast engine takes as many cache rows as
    `max_cache_bytes` holds (None: a quarter of the available memory), at most 128 (`batching.default_slots`);
    transformers' generate takes batches of 32.
    engine: "fast" (continuous batching, Llama-family), "hf" (transformers generate) or "auto".
    min_p: keep only tokens whose probability is >= min_p x the most likely token's (after temperature,
    top-k and top-p, as transformers orders them); 0 (the default) disables it and leaves sample ids as before.
    quantize: None, or "int8" (W8A8 matmuls in the fast engine; see README: Speed). int8 is quality-gated
    (`workbench.int8_gate`): it runs only if the model's mean NLL on held-out passages rises by at most
    `int8_max_nll_increase` (relative) under it; measured once per loaded model.
    model: also a backend (`workbench.backends`): "openai:MODEL@URL", "llamacpp:PATH.gguf" or a Backend.
    shard: (index, count): generate only the prompts at positions index, index + count, ... (one worker's
    share); every shard records the same run config, so shards on many workers fill one run.
    """
    from .backends import get_backend, is_backend_spec

    params = SamplingParams(n_per_prompt, temperature, top_p, top_k, min_p, max_new_tokens, seed, system_prompt)
    params.check()
    prompts = as_prompts(prompts)
    if batch_size is not None and batch_size <= 0:
        raise InputDataError(f"batch_size must be positive, got {batch_size}.", "Pass batch_size >= 1 (e.g. 64).")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise InputDataError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}.",
                             "E.g. shard=(0, 4) for the first of four workers.")
    if is_backend_spec(model):
        if quantize:
            raise InputDataError("quantize applies to the embedded engine, not to a backend.",
                                 "Drop quantize (a server or GGUF file has its own precision).")
        return _generate_with_backend(prompts, get_backend(model), params, run, generation,
                                      checkpoint_every or _checkpoint_every(batch_size), shard)
    if engine not in ("auto", "fast", "hf"):
        raise InputDataError(f"Unknown engine {engine!r}.", "Use 'auto', 'fast' or 'hf'.")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
    from . import engine as fast

    use_fast = engine == "fast" or (engine == "auto" and fast.supports(loaded.model))
    if engine == "fast" and not fast.supports(loaded.model):
        raise InputDataError(f"The fast engine does not support {loaded.model.config.model_type!r} models.",
                             "Use engine='hf' (or 'auto').")
    if quantize and not use_fast:
        raise InputDataError("quantize='int8' needs the fast engine.", "Drop quantize, or use a Llama-family model.")
    if quantize:
        from .int8_gate import check_int8

        check_int8(loaded, int8_max_nll_increase)
    engine_name = "fast" if use_fast else "hf"

    run, done = _open_run(run, prompts, {"model": loaded.name, "dtype": loaded.dtype, "quantize": quantize,
                                         "engine": engine_name}, params, generation)

    rows, requests = _local_requests(loaded, prompts, params, quantize, done, shard)
    constant = _constant_columns(loaded.name, params, loaded.dtype, quantize, engine_name)
    stops = stop_token_ids(loaded.tokenizer, loaded.model)
    if use_fast:
        from .batching import default_slots

        per_slot = loaded.kv_bytes_per_token() * (max((len(r.prompt_ids) for r in requests), default=1)
                                                  + max_new_tokens)
        slots = default_slots(per_slot, len(requests) if batch_size is None else min(batch_size, len(requests)),
                              max_cache_bytes)
        runner = loaded.fast_engine(quantize)  # built once per model and quantize, shared with the graders
        finished_iter = runner.run(requests, stops, temperature, top_k, top_p, slots=slots, min_p=min_p)
    else:
        finished_iter = _hf_generate(loaded, requests, stops, params, batch_size or HF_BATCH_SIZE)

    new_rows = _collect(finished_iter, rows, constant, loaded.tokenizer, run, generation, requests,
                        checkpoint_every or _checkpoint_every(batch_size))
    return collect_samples(new_rows, run, generation, _shard(prompts, shard))


def _local_requests(loaded: LoadedModel, prompts: pd.DataFrame, params: SamplingParams, quantize, done: set,
                    shard) -> tuple[list[dict], list]:
    """The rows and engine requests of the samples not yet in the run; a prompt longer than the context
    allows keeps its last tokens (the question and the assistant turn), with a warning that counts them."""
    from .engine import Request

    budget = loaded.context_length - params.max_new_tokens
    if budget <= 0:
        raise InputDataError(f"max_new_tokens={params.max_new_tokens} leaves no room for the prompt in the model's "
                             f"{loaded.context_length}-token context.", f"Use max_new_tokens < {loaded.context_length}.")
    rows, requests, truncated = [], [], 0
    for prompt in _shard(prompts, shard).to_dict("records"):
        prompt_ids = loaded.encode(prompt["prompt"], bool(prompt["chat"]), params.system_prompt)
        was_truncated = len(prompt_ids) > budget
        if was_truncated:
            prompt_ids = prompt_ids[-budget:]
        for index in range(params.n_per_prompt):
            sample_id, sample_seed = _sample_identity((loaded.name, loaded.dtype, quantize), params, prompt, index)
            if sample_id in done:
                continue
            truncated += was_truncated
            requests.append(Request(len(rows), prompt_ids, sample_seed, params.max_new_tokens))
            rows.append({**prompt, "sample_id": sample_id, "sample_index": index, "n_prompt_tokens": len(prompt_ids),
                         "prompt_truncated": was_truncated, "seed": params.seed, "sample_seed": sample_seed})
    if truncated:
        warnings.warn(f"{truncated} prompt(s) were longer than the context allows ({budget} tokens = context "
                      f"{loaded.context_length} - max_new_tokens {params.max_new_tokens}); kept their last {budget} "
                      "tokens. The ledger counts them (truncated_prompts).", stacklevel=3)
    return rows, requests


def _open_run(run, prompts: pd.DataFrame, model_setup: dict, params: SamplingParams, generation: int):
    """The run (or None) and the sample ids it already holds; refuses a run made by other settings
    (`model_setup`: what identifies the model and engine, recorded with the sampling params and prompts)."""
    if run is None:
        return None, set()
    from .store import Run

    run = run if isinstance(run, Run) else Run(run)
    setup = {**model_setup, **params.recorded(), "prompts": len(prompts),
             "prompt_set": _hash(list(prompts["prompt_id"]), list(prompts["prompt"]))[:16]}
    tasks = sorted(set(prompts["task"])) if "task" in prompts.columns else ["prompts"]
    run.check_config(run.config_key("generate", "+".join(map(str, tasks)), generation), setup)
    return run, run.sample_ids("samples", generation)


def _sample_identity(model_key: tuple, params: SamplingParams, prompt: dict, index: int) -> tuple[str, int]:
    """A sample's id (hash of the model, the prompt, the sampling params, the base seed and the index: what a
    rerun matches to skip finished samples) and its own seed (from the base seed, prompt_id and index).
    One scheme for the embedded engine and every backend; `model_key` is what names the model there."""
    sample_id = _hash(*_identity_parts(model_key, params, prompt, index))[:20]
    return sample_id, int(_hash(params.seed, prompt["prompt_id"], index)[:15], 16)


def _identity_parts(model_key: tuple, params: SamplingParams, prompt: dict, index: int) -> tuple:
    """What a sample id hashes. min_p joins only when set: with min_p 0 the parts (and so the ids of runs made
    before min-p existed, which a rerun must find to resume) are exactly the old ones."""
    min_p = (params.min_p,) if params.min_p else ()
    return (*model_key, prompt["prompt"], bool(prompt["chat"]), params.temperature, params.top_p, params.top_k,
            *min_p, params.max_new_tokens, params.system_prompt, params.seed, index)


def _constant_columns(model: str, params: SamplingParams, dtype, quantize, engine: str) -> dict:
    """The columns every row of one generate() call shares (a `min_p` column only when min-p is on)."""
    min_p = {"min_p": params.min_p} if params.min_p else {}
    return {"model": model, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
            **min_p, "max_new_tokens": params.max_new_tokens, "system_prompt": params.system_prompt, "dtype": dtype,
            "quantize": quantize, "engine": engine}


def _shard(prompts: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    return prompts if shard is None else prompts.iloc[shard[0]::shard[1]]


def collect_samples(new_rows: list[dict], run, generation: int, prompts: pd.DataFrame) -> pd.DataFrame:
    """All samples of these prompts in prompt order: from the run when there is one (earlier parts too)."""
    frame = pd.DataFrame(new_rows)
    if run is not None:
        frame = run.read("samples", generation)
        order = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
        frame = frame[frame["prompt_id"].isin(order)]
        frame = frame.assign(_order=frame["prompt_id"].map(order)).sort_values(["_order", "sample_index"])
        frame = frame.drop(columns="_order").reset_index(drop=True)
    elif len(frame):
        frame = frame.sort_values(["_key"]).drop(columns="_key").reset_index(drop=True)
    if len(frame) == 0:
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    return frame[[c for c in _COLUMN_ORDER if c in frame.columns] +
                 [c for c in frame.columns if c not in _COLUMN_ORDER and c != "_key"]]


def _collect(finished: Iterator, rows: list[dict], constant: dict, tokenizer, run, generation: int, requests,
             checkpoint_every: int, backend=None) -> list[dict]:
    """Turn finished requests into rows; checkpoint them into the run as parts; log the ledger.

    Items are the engine's token lists or a backend's `Completion`s. If the stream fails (a server went
    away), the rows finished so far are written before the error propagates: a rerun does only the rest.
    """
    out, pending = [], []
    chunk_started = time.perf_counter()

    def flush():
        nonlocal pending, chunk_started
        if run is not None and pending:
            # a part's rows in request order (prompt, then sample index), not in the order they finished
            frame = pd.DataFrame(sorted(pending, key=lambda row: row["_key"]))
            frame = frame.drop(columns=["_key", "_retries"], errors="ignore")
            seconds = time.perf_counter() - chunk_started
            completion = int(frame["n_completion_tokens"].sum())
            prompt_tokens = int(frame["n_prompt_tokens"].sum())
            extra = {}
            if backend is not None:
                extra = {"retries": int(sum(r["_retries"] for r in pending)),
                         "concurrency": backend.concurrency}
                cost = backend.cost(prompt_tokens, completion)
                if cost is not None:
                    extra["cost_usd"] = round(cost, 6)
            run.append("samples", frame, generation, log=dict(
                stage="generate", generation=generation, items=len(frame), prompt_tokens=prompt_tokens,
                completion_tokens=completion, seconds=round(seconds, 3),
                tokens_per_s=round(completion / max(seconds, 1e-9), 1),
                truncated_prompts=int(frame["prompt_truncated"].sum()), model=constant["model"],
                dtype=constant["dtype"], quantize=constant["quantize"], engine=constant["engine"], **extra))
        pending = []
        chunk_started = time.perf_counter()

    with progress(len(requests), "generate", unit="samples") as bar:
        try:
            for item in finished:
                if hasattr(item, "text"):  # a backend's Completion
                    fields = {"completion": item.text, "n_prompt_tokens": item.n_prompt_tokens,
                              "n_completion_tokens": item.n_completion_tokens, "_retries": item.retries}
                else:
                    fields = {"completion": tokenizer.decode(item.token_ids, skip_special_tokens=True),
                              "n_completion_tokens": len(item.token_ids)}
                row = {**rows[item.key], **constant, "_key": item.key, "finish_reason": item.finish_reason, **fields}
                out.append(row)
                pending.append(row)
                bar.update(1, tokens=row["n_completion_tokens"])
                if len(pending) >= checkpoint_every:
                    flush()
        finally:
            flush()
    return [{k: v for k, v in row.items() if k != "_retries"} for row in out]


def _generate_with_backend(prompts: pd.DataFrame, backend, params: SamplingParams, run, generation: int,
                           checkpoint_every: int, shard) -> pd.DataFrame:
    """generate() over a request/response backend (OpenAI-compatible server, llama.cpp): same rows, same run."""
    from .backends import Request

    run, done = _open_run(run, prompts, backend.settings(), params, generation)
    rows, requests = [], []
    for prompt in _shard(prompts, shard).to_dict("records"):
        for index in range(params.n_per_prompt):
            sample_id, sample_seed = _sample_identity((backend.name, backend.engine, None), params, prompt, index)
            if sample_id in done:
                continue
            requests.append(Request(len(rows), prompt["prompt"], bool(prompt["chat"]), params.system_prompt,
                                    sample_seed, params.max_new_tokens, params.temperature, params.top_p, params.top_k,
                                    params.min_p))
            rows.append({**prompt, "sample_id": sample_id, "sample_index": index, "prompt_truncated": False,
                         "seed": params.seed, "sample_seed": sample_seed})
    constant = _constant_columns(backend.name, params, backend.engine, None, backend.engine)
    new_rows = _collect(run_requests(backend, requests), rows, constant, None, run, generation, requests,
                        checkpoint_every, backend=backend)
    return collect_samples(new_rows, run, generation, _shard(prompts, shard))


def run_requests(backend, requests: list) -> Iterator:
    """Completions as they finish, `backend.concurrency` in flight. On the first failure the queued
    requests are dropped and the error is raised (after the finished ones were yielded)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if backend.concurrency == 1:
        yield from (backend.complete(r) for r in requests)
        return
    queue = iter(requests)
    pool = ThreadPoolExecutor(backend.concurrency, thread_name_prefix="workbench-request")
    try:
        # a bounded window (not all requests at once), so a failure leaves little queued work behind
        in_flight = {pool.submit(backend.complete, r) for r in itertools.islice(queue, 2 * backend.concurrency)}
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            failed = [f for f in done if f.exception() is not None]
            for future in done:
                if future.exception() is None:
                    yield future.result()
                    nxt = None if failed else next(queue, None)
                    if nxt is not None:
                        in_flight.add(pool.submit(backend.complete, nxt))
            if failed:
                # let the requests already running finish (they cost tokens), then report the failure
                for future in in_flight:
                    if not future.cancel() and future.exception(timeout=None) is None:
                        yield future.result()
                raise failed[0].exception()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
