"""Shared by the experiment scripts: argument parsing, running every arm over seeds, the tables, and writing
the summary into the README between markers, so the numbers there always come from a run of the script
(never typed by hand).

Seeds: `--seeds 0,1,2` (the default; `--seed 3` is one seed). Each seed's arms run in their own folders,
`<runs>/seed-<s>/<arm>`, and a rerun resumes them (finished generations are read back, not recomputed).
Written under --out: `<name>.csv`, the long table (one row per seed, arm and generation; a `seed` column);
`<name>.json`, the summary per (arm, generation) with each metric's mean and 95% t-interval half-width
across seeds (`<metric>_mean`, `<metric>_ci95`), the machine, the seconds and the configs; `<name>.md`, the
summary as markdown ("mean ± half-width"), which also goes into the README between
`<!-- <name>:start -->` and `<!-- <name>:end -->` (not for --smoke, nor with --no-readme).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT))


def seeds_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in str(text).replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs at least one seed and no repeats; got {text!r}")
    return seeds


def parse(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what the test suite runs)")
    parser.add_argument("--runs", default=None, help="folder for the run folders, <runs>/seed-<s>/<arm> "
                        "(default data/runs/experiments/<name>[-smoke])")
    parser.add_argument("--out", default=None, help="where the CSV/JSON/markdown tables go (default "
                        "experiments/results; with --smoke <runs>/results, so a smoke never overwrites them)")
    parser.add_argument("--seeds", type=seeds_list, default=[0, 1, 2], help="seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds SEED)")
    parser.add_argument("--no-readme", action="store_true", help="do not update the README table")
    parser.add_argument("--model", default=None, help="base model spec (default: each experiment's, the embedded "
                        "smollm2-135m); the tests run the smoke on a tiny random model of the same architecture")
    parser.add_argument("--track", nargs="?", const="", default=None, metavar="PROJECT",
                        help="log every arm, seed and generation (and the loss curves) to trackio's local store, "
                        "data/tracking; project: the experiment's name unless given (README: Tracking)")
    args = parser.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    return args


def machine() -> dict:
    import torch

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(frame) -> str:
    """A GitHub markdown table; floats with 3 decimals, missing values blank."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(summary, metrics: list[str], keep: list[str] | None = None) -> str:
    """The summary as markdown: the `keep` columns as they are, then one column per metric written
    "mean ± half-width" (`workbench.experiments.format_summary`)."""
    from workbench.experiments import format_summary

    return markdown_table(format_summary(summary, metrics, keep or ["arm", "generation", "seeds"]))


def command_line(name: str, args) -> str:
    return (f"python experiments/{name}.py" + (" --smoke" if args.smoke else "")
            + ("" if args.seeds == [0, 1, 2] else f" --seeds {','.join(map(str, args.seeds))}"))


def busy_seconds(folders, gap: float = 300.0) -> float:
    """The work recorded in the run `folders`: every ledger entry's time, all folders together
    (they ran one after another), and the gaps between consecutive entries summed where shorter than `gap`
    seconds (a longer gap is a pause between pieces: the experiment was stopped and later resumed). An experiment
    run in pieces reports its whole cost this way."""
    from datetime import datetime

    times = []
    for ledger in (ledger for folder in folders for ledger in Path(folder).rglob("ledger.jsonl")):
        for line in ledger.read_text().splitlines():
            try:
                times.append(datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00")).timestamp())
            except (ValueError, KeyError, TypeError):
                continue
    times.sort()
    return float(sum(b - a for a, b in zip(times, times[1:]) if b - a < gap))


def write(name: str, frame, summary, args, started: float, markdown_body: str, extra: dict | None = None,
          interval: str = "mean ± 95% t-interval half-width across seeds") -> str:
    """<out>/<name>.csv (the long table), <name>.json (summary + machine + seconds + extra), <name>.md
    (`markdown_body` and how it was made); the README between the name's markers unless smoke / --no-readme.
    Returns the markdown."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False)
    seconds = time.perf_counter() - started
    command = command_line(name, args)
    seeds = ", ".join(map(str, args.seeds))
    busy = busy_seconds(args.runs_folders) if getattr(args, "runs_folders", None) else None
    pieces = (f" ({busy / 60:.1f} min of the runs' own work, summed from their ledgers over every piece it ran in)"
              if busy and busy > 1.5 * seconds else "")
    markdown = (markdown_body + "\n\n"
                f"Made by `{command}` in {seconds / 60:.1f} min{pieces} on {machine()['cpu']} ({machine()['cores']} cores), "
                f"seeds {seeds} ({interval}), {time.strftime('%Y-%m-%d')}.\n")
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(json.dumps(
        {"name": name, "command": command, "seconds": seconds, "machine": machine(), "seeds": args.seeds,
         **(extra or {}), "summary": json.loads(summary.to_json(orient="records"))}, indent=2, default=str))
    print(markdown, flush=True)
    if not args.smoke and not args.no_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if pattern.search(text):
            readme.write_text(pattern.sub(lambda m: m.group(1) + markdown + m.group(2), text))
    return markdown


def run_experiment(name: str, make_configs, columns: list[str], doc: str, metrics: list[str] | None = None,
                   extra=None, markdown=None, share_base_eval: bool = False, argv: list[str] | None = None,
                   prepare=None) -> int:
    """Parse the arguments, run (or resume) every arm of `make_configs(<runs>/seed-<s>, smoke=, seed=)` for
    every seed, and write the long table of `columns` (with `seed`) and the summary of `metrics` (default:
    the numeric ones among `columns`). `extra(frame)` adds fields to the JSON; `markdown(summary, extra)`
    replaces the default summary table; share_base_eval evaluates generation 0 once per seed; `prepare(frame)`
    adds derived columns to the long table before anything is summarised."""
    args = parse(doc, argv)
    from workbench.experiments import run_seeds, seed_configs, summarize_seeds
    from workbench.tracking import track_experiment

    started = time.perf_counter()
    runs = Path(args.runs) if args.runs else ROOT / "data" / "runs" / "experiments" / (name + ("-smoke" if args.smoke else ""))
    args.runs_folders = None  # set below, once the arms' folders are known
    args.out = args.out or str(runs / "results" if args.smoke else RESULTS)
    configs = seed_configs(make_configs, runs, args.seeds, smoke=args.smoke,
                           **({"model": args.model} if args.model else {}))
    # the arms' own folders and each seed's shared base evaluation (not other arms that may lie beside them)
    args.runs_folders = [Path(c.run) for arms in configs.values() for c in arms.values()] + \
        sorted({p for arms in configs.values() for c in arms.values() for p in Path(c.run).parent.glob("_base_eval*")})
    if args.track is not None:  # one tracker run per (arm, seed), grouped by arm; the run records are unchanged
        track_experiment(configs, project=args.track or name + ("-smoke" if args.smoke else ""))
    frame = run_seeds(configs, say=lambda text: print(text, flush=True), share_base_eval=share_base_eval)
    if prepare is not None:
        frame = prepare(frame)
    long = frame[["seed"] + [c for c in columns if c in frame.columns]]
    if metrics is None:
        metrics = [c for c in columns if c not in ("arm", "generation", "seed") and c in frame.columns
                   and (frame[c].dtype.kind in "biuf" or frame[c].dtype == bool)]
    summary = summarize_seeds(frame, metrics)
    fields = extra(frame) if extra else {}
    body = markdown(summary, fields) if markdown else summary_markdown(summary, metrics)
    write(name, long, summary, args, started, body,
          extra={**fields, "configs": {str(seed): {arm: c.to_record() for arm, c in arms.items()}
                                       for seed, arms in configs.items()}})
    return 0
