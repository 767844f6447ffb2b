"""The CLI, the README's two commands, and that the project files agree with each other."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_cli_generate_and_show(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "cli"
    assert main(["generate", "--model", str(tiny_model_dir), "--task", "arithmetic", "--n", "3",
                 "--max-new-tokens", "8", "--run", str(run), "--task-params", '{"digits": 1}']) == 0
    assert "3 samples" in capsys.readouterr().out
    assert main(["runs", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "arithmetic" in out and "ledger totals" in out
    assert main(["runs", "show", str(tmp_path / "nope")]) == 2


def test_cli_errors_are_one_paragraph(tiny_model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_model_dir), "--task", "arithmetic", "--n", "2",
                 "--max-new-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: max_new_tokens must be positive") and "Fix:" in err and err.count("\n") == 1


def test_console_script_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "workbench"), "models", "list"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "smollm2-135m" in result.stdout and "ready" in result.stdout


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python.split("=")[1] in project["requires-python"].replace(">=", "")
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert '-e ".[dev]"' in pip or "-e .[dev]" in pip  # pyproject is the one source of truth
    assert "dev" in project["optional-dependencies"]
    makefile = (ROOT / "Makefile").read_text()
    torch_pins = set(re.findall(r"torch==[\d.]+", makefile + " ".join(pip)))
    assert len(torch_pins) == 1  # the Makefile and the conda env install the same CPU torch
    for core in ("jupyterlab", "ipywidgets", "transformers", "torch", "pandas", "plotly", "datasets"):
        assert any(d.startswith(core) for d in project["dependencies"]), core


def test_readme_two_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_notebooks_committed_without_outputs():
    import json

    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), notebook.name
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), notebook.name
