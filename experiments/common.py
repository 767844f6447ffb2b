"""Shared by the experiment scripts: argument parsing, the results table, and writing it into the README
between markers, so the numbers there always come from a run of the script (never typed by hand)."""
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


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what the test suite runs)")
    parser.add_argument("--runs", default=None, help="folder for the arms' run folders (default data/runs/experiments/...)")
    parser.add_argument("--out", default=str(RESULTS), help="where the CSV/JSON/markdown tables go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-readme", action="store_true", help="do not update the README table")
    return parser.parse_args()


def machine() -> dict:
    import torch

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def markdown_table(frame) -> str:
    """A GitHub markdown table; floats with 3 decimals, missing values blank."""
    def cell(value):
        if value is None or (isinstance(value, float) and value != value):
            return ""
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write(name: str, frame, table, args, started: float, extra: dict | None = None) -> None:
    """<out>/<name>.csv (every column), <name>.json (table + machine + seconds), <name>.md (the table)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False)
    seconds = time.perf_counter() - started
    command = f"python experiments/{name}.py" + (" --smoke" if args.smoke else "") + (
        f" --seed {args.seed}" if args.seed else "")
    markdown = (markdown_table(table) + "\n\n"
                f"Made by `{command}` in {seconds / 60:.1f} min on {machine()['cpu']} "
                f"({machine()['cores']} cores), seed {args.seed}, {time.strftime('%Y-%m-%d')}.\n")
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(json.dumps({"name": name, "command": command, "seconds": seconds,
                                                  "machine": machine(), "seed": args.seed, **(extra or {}),
                                                  "table": table.to_dict(orient="records")}, indent=2, default=str))
    print(markdown, flush=True)
    if not args.smoke and not args.no_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if pattern.search(text):
            readme.write_text(pattern.sub(lambda m: m.group(1) + markdown + m.group(2), text))


def run_experiment(name: str, make_configs, columns: list[str], doc: str, extra=None) -> int:
    """Parse the arguments, run (or resume) every arm of `make_configs(runs, smoke=, seed=)`, write the table
    of `columns`; `extra(frame)` adds fields to the JSON. Both experiment scripts are this plus their setup."""
    args = parse(doc)
    from workbench.experiments import run_arms

    started = time.perf_counter()
    runs = args.runs or ROOT / "data" / "runs" / "experiments" / (name + ("-smoke" if args.smoke else ""))
    configs = make_configs(runs, smoke=args.smoke, seed=args.seed)
    frame = run_arms(configs, say=lambda text: print(text, flush=True))
    table = frame[[c for c in columns if c in frame.columns]]
    write(name, frame, table, args, started,
          extra={**(extra(frame) if extra else {}), "configs": {arm: c.to_record() for arm, c in configs.items()}})
    return 0
