"""The dataset card of an export: the README.md written next to the data by `workbench.export`.

YAML front matter that the Hugging Face hub and `datasets` read (pretty_name, tags, size_categories and, for
jsonl/parquet, `configs` naming the data file as the train split), plus a `workbench:` block with the numbers
a script may want (run, generation, selection, policy, accept rate). Then what a reader needs to judge the
data: the command that made it, model and sampling, graders, the selection policy and its thresholds, the
accept rate, diversity of all vs accepted samples, the judge audit against the verifier, human label counts,
seeds and the fields. Everything is read from the run folder (config.yaml, scores, labels, the selection).

The card is safe to share: paths of this machine are written relative to the run or working directory (or as
~/...), config values under secret-looking keys and strings shaped like API keys are redacted.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from .store import SCORE_PREFIX, Run

if TYPE_CHECKING:
    from .export import ExportSource

DATA_FILES = {"jsonl": "train.jsonl", "parquet": "train.parquet"}  # "train": the hub reads it as the train split
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|credential|auth|(^|_)token)$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|Bearer\s+\S{16,})")
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+-]+/)+([\w.@+-]+)")  # /a/b/c (not in a URL): shown as .../c
VENDI_TEXTS = 500  # the card's n-gram vendi: at most this many texts per set (500: ~0.2 s, 2000: ~10 s on 2 cores)
FIELDS = {
    "sample_id": "the sample's id in the run (a hash of model, prompt, sampling settings, seed and index)",
    "generation": "the run's generation the sample was made in",
    "task": "the task that made the prompt",
    "prompt_id": "the prompt's id (samples of one prompt share it)",
    "prompt": "the prompt text",
    "completion": "the model's answer",
    "reference": "the task's reference answer (verifiable tasks), else empty",
    "chat": "whether the prompt was sent through the chat template",
    "finish_reason": "'stop' (the model ended) or 'length' (cut at max_new_tokens)",
    "n_completion_tokens": "tokens in the completion",
    "model": "the model that wrote the completion",
    "sample_seed": "the seed the sample was drawn with",
    "human_label": "the latest human label in the run: 'good', 'bad', 'exclude' (kept out by hand) or '' (none)",
    "chosen": "the preferred answer", "rejected": "the dispreferred answer",
}


# ---------------------------------------------------------------------------------------------- portability
def portable_path(path: str | Path, run: Run | None = None) -> str:
    """`path` without this machine's absolute prefix: relative to the run's parent, the working directory or
    the home directory (~/...), else its last component."""
    path = Path(path).expanduser().absolute()
    bases = ([run.path.absolute().parent] if run is not None else []) + [Path.cwd().absolute()]
    for base in bases:
        if path == base or base in path.parents:
            return str(path.relative_to(base)) or "."
    home = Path.home().absolute()
    if home in path.parents:
        return "~/" + str(path.relative_to(home))
    return path.name


def portable_model(name: Any, run: Run | None = None) -> Any:
    """A model name as recorded (an alias@hash, a hub id, or a local folder's absolute path) without the path."""
    if isinstance(name, str) and name.startswith("/"):
        spec, at, tail = name.partition("@")
        return portable_path(spec, run) + at + tail
    return name


def redact(value: Any) -> Any:
    """A config value with every secret-looking key's value replaced (nested dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") and not str(k).endswith("_env")
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def scrub(text: str, run: Run | None = None) -> str:
    """`text` with this machine's paths made portable and key-shaped strings redacted (a last line of defence:
    every value the card shows already went through `portable_path`/`redact`)."""
    roots = ([run.path.absolute().parent] if run is not None else []) + [Path.cwd().absolute()]
    for root in roots:
        text = text.replace(str(root) + "/", "")
    text = text.replace(str(Path.home().absolute()) + "/", "~/")
    text = _ABSOLUTE.sub(lambda m: ".../" + m.group(1), text)
    return _SECRET_VALUE.sub(REDACTED, text)


# ---------------------------------------------------------------------------------------------- reading the run
def config_sections(run: Run, stage: str, generation: int, tasks: list[str] | None = None) -> dict[str, dict]:
    """The config.yaml sections of `stage` ("generate", "grade") for `generation`: name -> settings; for
    generate, only those whose task(s) overlap `tasks` when given."""
    out = {}
    suffix = ":" + run.generation_name(generation)
    for key, values in run.config.items():
        if not (isinstance(key, str) and key.startswith(stage + ":") and key.endswith(suffix)):
            continue
        name = key[len(stage) + 1:-len(suffix)]
        if tasks is None or stage != "generate" or set(name.split("+")) & set(tasks):
            out[name] = redact(values or {})
    return out


def _tasks(frame: pd.DataFrame) -> list[str] | None:
    return sorted(map(str, frame["task"].dropna().unique())) if "task" in frame.columns else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(not recorded in this run)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


# ---------------------------------------------------------------------------------------------- sections
def policies(source: ExportSource) -> dict[str, dict]:
    """part name -> the policy's fields that are set (thresholds always), for the card and its YAML."""
    policy = source.selection.policy
    parts = policy if isinstance(policy, dict) else {source.selection_name: policy}
    if source.task is not None and source.task in parts:
        parts = {source.task: parts[source.task]}
    return {name: {k: v for k, v in p.to_dict().items() if k == "thresholds" or v not in (None, False, {})}
            for name, p in parts.items()}


def _selection_section(source: ExportSource) -> str:
    rows = []
    for name, fields in policies(source).items():
        thresholds = ", ".join(f"{g} >= {v:g}" for g, v in fields.get("thresholds", {}).items()) or "none"
        other = {k: v for k, v in fields.items() if k != "thresholds"}
        rows.append({"part": name, "thresholds (score >= value, all must hold)": thresholds,
                     "other rules": ", ".join(f"{k}={v}" for k, v in other.items()) or "none"})
    scope, rows_out = source.scope, source.rows
    saved = source.run.selection_path(source.generation, source.selection_name).relative_to(source.run.path)
    restricted = f", restricted to task `{source.task}`" if source.task else ""
    text = [f"Selection `{source.selection_name}`, saved in `{saved}`{restricted}.", "", _table(rows), "",
            f"**Accept rate: {100 * source.accept_rate:.1f}%** ({len(rows_out)} of {len(scope)} samples)."]
    if "task" in scope.columns and scope["task"].nunique() > 1:
        accepted = scope["sample_id"].isin(set(rows_out["sample_id"]))
        text += ["", _table([{"task": task, "samples": len(part), "accepted": int(accepted[part.index].sum()),
                              "accept rate": f"{100 * accepted[part.index].mean():.1f}%"}
                             for task, part in scope.groupby("task")])]
    reasons = pd.Series(dict(zip(source.selection.sample_ids, source.selection.rejected_by)))
    counts = reasons.reindex(scope["sample_id"]).loc[lambda s: s != ""].value_counts()
    if len(counts):
        text += ["", "Rejected by (the first rule that rejected each row):", "",
                 _table([{"rule": rule, "samples": int(n)} for rule, n in counts.items()])]
    return "\n".join(text)


def _graders_section(source: ExportSource, graders: dict[str, dict]) -> str:
    names = list(dict.fromkeys(list(graders) + [c[len(SCORE_PREFIX):] for c in source.scope.columns
                                                if str(c).startswith(SCORE_PREFIX)]))
    rows = []
    for name in names:
        settings = dict(graders.get(name, {}))
        column = SCORE_PREFIX + name
        row = {"grader": name, "class": settings.pop("class", ""),
               "settings": {k: v for k, v in settings.items() if k != "name"} or ""}
        if column in source.scope.columns:
            row["mean score (all)"] = float(pd.to_numeric(source.scope[column], errors="coerce").mean())
            row["mean score (exported)"] = float(pd.to_numeric(source.rows[column], errors="coerce").mean()) \
                if column in source.rows.columns else np.nan
        rows.append(row)
    return _table(rows)


# what every sample records of how it was drawn (sampling._constant_columns; min_p only when it was on)
SAMPLING_COLUMNS = ("model", "dtype", "quantize", "engine", "temperature", "top_p", "top_k", "min_p", "max_new_tokens",
                    "seed", "system_prompt")


def _generation_rows(sections: dict[str, dict], run: Run, scope: pd.DataFrame) -> list[dict]:
    """One row per generate call, from config.yaml; a run whose config lacks them (made by hand, or by an older
    version) gets them from the samples' own columns instead."""
    rows = []
    for tasks, settings in sections.items():
        settings = dict(settings)
        rows.append({"task(s)": tasks, "model": portable_model(settings.pop("model", ""), run),
                     **{k: v for k, v in settings.items() if k != "prompt_set"}})
    columns = [c for c in ("task", *SAMPLING_COLUMNS) if c in scope.columns]
    if rows or "model" not in columns:
        return rows
    combos = scope[columns].astype(str).drop_duplicates().to_dict("records")
    return [{**combo, "model": portable_model(combo["model"], run)} for combo in combos]


def _diversity_section(source: ExportSource) -> str:
    from .metrics import diversity as d

    text_column = "completion" if source.kind == "samples" else "chosen"
    sets = {"all": source.scope, "exported": source.rows}
    if source.kind == "pairs":
        sets = {"chosen": source.rows, "rejected": source.rows.rename(columns={"rejected": "chosen"})}
    texts = {name: [_text(v) for v in frame[text_column]] for name, frame in sets.items()}
    # vendi grows with set size and costs t^3: both sets at one size, a seeded sample of at most VENDI_TEXTS
    size = min([VENDI_TEXTS] + [len(t) for t in texts.values()])
    metrics = {"n_texts": len, "distinct_1": lambda t: d.distinct_n(t, 1), "distinct_2": lambda t: d.distinct_n(t, 2),
               "entropy_2": lambda t: d.ngram_entropy(t, 2), "compression_ratio": d.compression_ratio,
               "self_bleu": lambda t: d.self_bleu(t)["mean"],
               f"vendi_ngram (at n={size})": lambda t: d.ngram_vendi(t, max_texts=size) if size else 0.0}
    rows = [{"metric": m, **{name: f(t) for name, t in texts.items()}} for m, f in metrics.items()]
    return ("Lexical metrics of the completions (`workbench.metrics.diversity`). Higher is more diverse, except "
            "compression_ratio and self_bleu, which measure sameness; vendi is computed on a seeded sample of the "
            "same size from each set. Embedding metrics are not computed at export (notebook 02 has them).\n\n"
            + _table(rows))


def _text(value: Any) -> str:
    """A completion, or a conversational answer's content ([{"role": ..., "content": ...}])."""
    if isinstance(value, (list, np.ndarray)):
        return " ".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return str(value)


def _audit_section(source: ExportSource, labels: dict[str, str]) -> str:
    from .metrics import audit_table

    scope = source.scope
    has_verifier = SCORE_PREFIX + "verifier" in scope.columns and scope[SCORE_PREFIX + "verifier"].notna().any()
    known = {k: v for k, v in labels.items() if v in ("good", "bad")}
    if not has_verifier and not known:
        return "No verifier scores and no human labels in these samples: the graders could not be audited."
    table = audit_table(scope, verifier="verifier" if has_verifier else None, human_labels=known or None)
    rows = [{"grader": r.grader, "against": r.against,
             "ROC AUC": "NaN (one class only)" if np.isnan(r.roc_auc) else r.roc_auc,
             "95% CI": "" if np.isnan(r.ci_low) else f"{r.ci_low:.3f}-{r.ci_high:.3f}", "n": r.n, "positives": r.positives}
            for r in table.itertuples()]
    return ("How well each grader's score ranks correct (verifier = 1) or human-approved samples above the rest, "
            "over all samples of this selection: ROC AUC, 0.5 = chance, NaN when a class is missing "
            "(`workbench.metrics.audit.audit_table`, 1000 bootstrap resamples, seed 0).\n\n" + _table(rows))


def _labels_section(source: ExportSource, labels: dict[str, str]) -> str:
    order = {"good": 0, "bad": 1}
    kinds = sorted(set(labels.values()), key=lambda k: (order.get(k, 2), k))  # good, bad, then others ('exclude')

    def count(ids) -> dict:
        verdicts = pd.Series([labels.get(i, "") for i in ids], dtype=object)
        return {**{kind: int((verdicts == kind).sum()) for kind in kinds}, "unlabelled": int((verdicts == "").sum())}

    text = _table([{"samples": "in the selection", **count(source.scope["sample_id"])},
                   {"samples": "exported", **count(source.rows["sample_id"])}])
    exported = set(source.rows["sample_id"])
    # a 'good' label accepts a sample, any other label ('bad', 'exclude') keeps it out: see select.apply_policy
    disagree = sum((labels[i] == "good") != (i in exported) for i in source.scope["sample_id"] if i in labels)
    if disagree:
        text += (f"\n\n{disagree} label(s) disagree with the saved selection (labelled after it was saved): the "
                 "export keeps the selection as saved. Save the selection again to apply them.")
    return text


def _seeds_section(run: Run, generate: dict[str, dict], source: ExportSource) -> str:
    lines = [f"- generation `{tasks}`: seed {settings.get('seed')}" for tasks, settings in generate.items()]
    if "sample_seed" in source.rows.columns:
        lines.append("- each sample's own seed: the `sample_seed` column (derived from the seed, prompt_id and index)")
    loop = run.config.get("loop")
    if isinstance(loop, dict) and "seed" in loop:
        lines.append(f"- the self-learning loop: seed {loop['seed']}")
    lines.append("- card statistics: self-BLEU pair sampling seed 0, audit bootstrap seed 0")
    return "\n".join(lines)


def _fields_section(rows: pd.DataFrame) -> str:
    out = []
    for column, dtype in rows.dtypes.items():
        meaning = FIELDS.get(column) or (f"score of grader `{column[len(SCORE_PREFIX):]}` (NaN: not scored)"
                                         if str(column).startswith(SCORE_PREFIX) else "")
        out.append({"column": f"`{column}`", "type": str(dtype), "meaning": meaning})
    return _table(out)


def _usage_section(format: str) -> str:
    """How to load the export, and to share it (the hub part needs a network: not tested by the workbench)."""
    if format == "datasets":
        return ('```python\nfrom datasets import load_from_disk\ndataset = load_from_disk("OUT")\n'
                "# share it (needs a network and `hf auth login`; check the license of the model that wrote it):\n"
                "from huggingface_hub import DatasetCard, create_repo\n"
                'repo = create_repo("YOUR_NAME/DATASET", repo_type="dataset", private=True, exist_ok=True).repo_id\n'
                'DatasetCard.load("OUT/README.md").push_to_hub(repo)  # this card first: push_to_hub adds to it\n'
                "dataset.push_to_hub(repo)\n```")
    reader = "json" if format == "jsonl" else "parquet"
    return (f'```python\nfrom datasets import load_dataset\ndataset = load_dataset("{reader}", '
            f'data_files="OUT/{DATA_FILES[format]}")["train"]  # or load_dataset("OUT"): this card names the file\n'
            "# share it (needs a network and `hf auth login`; check the license of the model that wrote it):\n"
            "from huggingface_hub import create_repo, upload_folder\n"
            'repo = create_repo("YOUR_NAME/DATASET", repo_type="dataset", private=True, exist_ok=True).repo_id\n'
            'upload_folder(repo_id=repo, folder_path="OUT", repo_type="dataset")\n```')


# ---------------------------------------------------------------------------------------------- the card
def front_matter(source: ExportSource, format: str, command: str | None, title: str) -> dict:
    meta: dict[str, Any] = {"pretty_name": title, "language": ["en"], "tags": ["synthetic", "self-learning", "workbench"],
                            "task_categories": ["text-generation"], "size_categories": [_size_category(len(source.rows))]}
    if format in ("jsonl", "parquet"):
        meta["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES[format]}]}]
    block: dict[str, Any] = {"run": source.run.name, "generation": source.generation, "kind": source.kind,
                             "task": source.task, "rows": len(source.rows), "format": format}
    if source.kind == "samples":
        block.update({"selection": source.selection_name, "considered": len(source.scope),
                      "accept_rate": round(float(source.accept_rate), 6), "policy": policies(source)})
    block["command"] = command
    meta["workbench"] = block
    return meta


def card_text(source: ExportSource, format: str, command: str | None = None) -> str:
    """The README.md of an export of `source` in `format`; `command` is the command that made it."""
    run = source.run
    labels = run.labels(source.generation)
    generate = config_sections(run, "generate", source.generation, _tasks(source.scope))
    graders = config_sections(run, "grade", source.generation)
    what = "accepted samples" if source.kind == "samples" else "preference pairs (prompt, chosen, rejected)"
    title = (f"workbench: {run.name}, generation {source.generation}, "
             + (f"selection {source.selection_name}" if source.kind == "samples" else "preference pairs")
             + (f", task {source.task}" if source.task else ""))
    summary = (f"{len(source.rows)} {what} from generation {source.generation} of the workbench run `{run.name}`"
               + (f" (task `{source.task}`)" if source.task else "") + ": synthetic text written by a language model "
               "and kept because graders (and any human labels) accepted it.")
    body = [f"# {title}", "", summary, "",
            "## How it was made", "", "```sh", command or "(exported from Python: workbench.export.export)", "```",
            f"Exported {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} as `{format}`.", "",
            "## Model and sampling", "", _table(_generation_rows(generate, run, source.scope)), "",
            "## Graders", "", _graders_section(source, graders), ""]
    if source.kind == "samples":
        body += ["## Selection policy and accept rate", "", _selection_section(source), ""]
    sets = "all vs accepted" if source.kind == "samples" else "chosen vs rejected"
    body += [f"## Diversity: {sets}", "", _diversity_section(source), ""]
    if source.kind == "samples":
        body += ["## Judge audit", "", _audit_section(source, labels), "",
                 "## Human labels", "", _labels_section(source, labels), ""]
    body += ["## Seeds", "", _seeds_section(run, generate, source), "",
             "## Fields", "", _fields_section(source.rows), "",
             "## Use", "", _usage_section(format), ""]
    meta = yaml.safe_dump(front_matter(source, format, command, title), sort_keys=False, allow_unicode=True)
    return scrub("---\n" + meta + "---\n\n" + "\n".join(body), run)
