"""The training panel: fine-tune on the threshold explorer's current selection, watch the loss live,
then compare the model before and after.

    panel = TrainingPanel(explorer, run=run)      # or TrainingPanel(samples=accepted_rows, ...)
    panel.widget                                  # button, progress bar, live loss plot, before/after tables
    panel.train()                                 # what the button does; returns the TrainResult

Before/after: held-out perplexity on real text, task accuracy on held-out problems (arithmetic, strict
and lenient), diversity of free generations, and a few example completions side by side, all from
`workbench.evaluate.evaluate`, so the panel and the loop measure the same way. With a run, the fine-tune
and both evaluations go under `run.panel_dir(generation + 1)`.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .errors import InputDataError
from .config import from_fields
from .loop_config import EvalConfig
from .models import DEFAULT_MODEL


DPO_TRACES = (("reward_margin", "reward margin"), ("reward_chosen", "chosen reward"),
              ("reward_rejected", "rejected reward"))


def _append_point(figure, name: str, x, y, secondary: bool = False) -> None:
    """Add (x, y) to the trace called `name`, creating it (on the right-hand axis when `secondary`)."""
    trace = next((t for t in figure.data if t.name == name), None)
    if trace is None:
        if secondary and "yaxis2" not in figure.layout.to_plotly_json():
            figure.update_layout(yaxis2=dict(title="DPO reward", overlaying="y", side="right", showgrid=False),
                                 legend=dict(orientation="h", y=-0.25))
        figure.add_scatter(x=[], y=[], mode="lines+markers", name=name, yaxis="y2" if secondary else "y")
        trace = figure.data[-1]
    trace.x = tuple(trace.x or ()) + (x,)
    trace.y = tuple(trace.y or ()) + (y,)


class TrainingPanel:
    """Parameters are stored as given; results land in `result`, `comparison` and `examples`."""

    def __init__(self, explorer=None, samples: pd.DataFrame | None = None, model=DEFAULT_MODEL, run=None,
                 generation: int = 0, train: dict | None = None, eval: dict | EvalConfig | None = None,
                 n_examples: int = 5, task_params: dict | None = None, out_dir: str | Path | None = None,
                 pairs: dict | None = None):
        if explorer is None and samples is None:
            raise InputDataError("TrainingPanel needs a ThresholdExplorer or accepted samples.",
                                 "Pass TrainingPanel(explorer) or TrainingPanel(samples=accepted_rows).")
        self.explorer, self.samples, self.model, self.run = explorer, samples, model, run
        self.generation, self.train_options, self.n_examples = generation, dict(train or {}), n_examples
        # small by default (a panel answers in seconds); `eval` sets EvalConfig fields, or is one
        self.eval_settings = eval if isinstance(eval, EvalConfig) else from_fields(EvalConfig, {
            "heldout_problems": 24, "heldout_texts": 8, "diversity_prompts": 8, "diversity_tokens": 32,
            **(eval or {})}, "eval")
        self.task_params = dict(task_params or {})
        self.out_dir = out_dir
        # with train={"method": "dpo"}: how the explorer's graded samples become preference pairs
        # (workbench.pairs: by, margin, per_prompt; the explorer's human labels override the grader)
        self.pairs_options = dict(pairs or {})
        self.result = None
        self.comparison: pd.DataFrame | None = None
        self.examples: pd.DataFrame | None = None
        self.message = ""
        self._ui = None

    # ------------------------------------------------------------------ logic
    @property
    def dpo(self) -> bool:
        return self.train_options.get("method") == "dpo"

    def selected(self) -> pd.DataFrame:
        """The rows to train on: the explorer's accepted rows (human labels included) or the given samples;
        for DPO, the preference pairs of all the explorer's samples (or of the given ones)."""
        if self.dpo:
            from .pairs import pairs

            graded = self.explorer.samples if self.explorer is not None else self.samples
            labels = self.explorer.labels if self.explorer is not None else None
            found = pairs(graded, **{"by": "verifier", **self.pairs_options}, labels=labels)
            if not found.n_pairs:
                raise InputDataError(found.message, "Pair by another grader (pairs={'by': ...}) or lower the margin.")
            return found.frame
        if self.explorer is not None:
            return self.explorer.samples[self.explorer.accepted_mask].reset_index(drop=True)
        return self.samples.reset_index(drop=True)

    def _folder(self) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        if self.run is not None:
            return self.run.panel_dir(self.generation + 1)
        import tempfile

        return Path(tempfile.mkdtemp(prefix="workbench-panel-"))

    def train(self):
        """Fine-tune on the current selection, then evaluate before and after. Never raises in the widget."""
        from .evaluate import evaluate
        from .models import load_model
        from .store import Run
        from .train import finetune

        rows = self.selected()
        what = "preference pairs" if self.dpo else "samples"
        if len(rows) == 0:
            raise InputDataError("The selection is empty: there is nothing to fine-tune on.",
                                 "Lower a threshold in the explorer so some samples are accepted.")
        folder = self._folder()
        task = str(rows["task"].iloc[0]) if "task" in rows.columns else "instructions"
        task = task if task in ("arithmetic", "instructions", "corpus") else "instructions"
        measure = dict(task=task, settings=self.eval_settings, task_params=self.task_params,
                       training_prompts=rows["prompt"].tolist())  # held-out problems: none of these
        before_model = self.model if not isinstance(self.model, str) else load_model(self.model, dtype="fp32")
        self._status(f"Evaluating the model before training ({len(rows)} {what} selected)...")
        before = evaluate(before_model, Run(folder / "before"), **measure)
        self._status(f"Fine-tuning on {len(rows)} {what}...")
        self.result = finetune(rows, model=before_model, out_dir=folder, callback=self._on_step,
                               **self.train_options)
        self._save_loss_curve()
        after_model = load_model(str(self.result.checkpoint), dtype="fp32")
        self._status("Evaluating the model after training...")
        after = evaluate(after_model, Run(folder / "after"), **measure)
        keys = [k for k in before if k in after and isinstance(before[k], float) and k != "eval_seconds"]
        self.comparison = pd.DataFrame({"metric": keys, "before": [before[k] for k in keys],
                                        "after": [after[k] for k in keys]})
        self.comparison["change"] = self.comparison["after"] - self.comparison["before"]
        prompts = rows.drop_duplicates("prompt").head(self.n_examples)
        self.examples = self._side_by_side(prompts, before_model, after_model)
        self.message = (f"Fine-tuned on {len(rows)} {what} in {self.result.stats['steps']} steps; loss "
                        f"{self.result.stats['first_loss']:.3f} -> {self.result.stats['last_loss']:.3f}; "
                        f"checkpoint {self.result.checkpoint}")
        self._status(self.message)
        self._show_tables()
        return self.result

    @staticmethod
    def _side_by_side(prompts: pd.DataFrame, before_model, after_model) -> pd.DataFrame:
        from .sampling import generate

        columns = [c for c in ("prompt_id", "prompt", "chat", "task", "reference") if c in prompts.columns]
        table = prompts[columns].reset_index(drop=True)
        for label, loaded in (("before", before_model), ("after", after_model)):
            out = generate(table, model=loaded, temperature=0.0, max_new_tokens=48)
            table[label] = out["completion"].to_numpy()
        return table[["prompt", "before", "after"] + (["reference"] if "reference" in table.columns else [])]

    # ------------------------------------------------------------------ widget
    @property
    def widget(self):
        if self._ui is None:
            self._build()
        return self._ui["box"]

    def _build(self) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go

        button = w.Button(description="fine-tune on the current selection", button_style="primary",
                          icon="play", layout=w.Layout(width="280px"))
        bar = w.IntProgress(value=0, min=0, max=1, description="steps", layout=w.Layout(width="420px"))
        loss = go.FigureWidget(go.Figure(go.Scatter(x=[], y=[], mode="lines+markers", name="loss")))
        loss.update_layout(title="training loss (live)", xaxis_title="step", yaxis_title="loss", height=280,
                           margin=dict(l=50, r=10, t=40, b=40))
        status = w.HTML("")
        tables = w.Output()
        self._ui = {"button": button, "bar": bar, "loss": loss, "status": status, "tables": tables,
                    "box": w.VBox([button, bar, status, loss, tables])}
        self._save_loss_curve()  # the titles above, for a notebook saved before any training
        button.on_click(lambda _: self._clicked())

    def _clicked(self) -> None:
        try:
            self._ui["button"].disabled = True
            self.train()
        except Exception as exc:  # a callback must never raise into the kernel: show what went wrong
            self._status(f"<b>Training did not run:</b> {html.escape(str(exc))}")
        finally:
            self._ui["button"].disabled = False

    def _status(self, text: str) -> None:
        self.message = text
        if self._ui is not None:
            self._ui["status"].value = f"<span class='wb-train-status'>{text}</span>"

    def _on_step(self, event: dict) -> None:
        if self._ui is None:
            return
        bar, loss = self._ui["bar"], self._ui["loss"]
        bar.max, bar.value = event["total_steps"], event["step"]
        with loss.batch_update():
            _append_point(loss, "loss", event["step"], event["loss"])
            for key, name in DPO_TRACES:  # DPO's rewards, on a second axis
                if event.get(key) is not None:
                    _append_point(loss, name, event["step"], event[key], secondary=True)

    def _save_loss_curve(self) -> None:
        """The loss figure as it is now (titles, the finished curve) into its saved widget state: live
        points never reach it otherwise (`widgets.save_figure_state`)."""
        if self._ui is not None:
            from .widgets import save_figure_state

            save_figure_state(self._ui["loss"])

    def _show_tables(self) -> None:
        if self._ui is None:
            return
        from IPython.display import display

        out = self._ui["tables"]
        out.clear_output()
        with out:
            display(self.comparison.round(4))
            with pd.option_context("display.max_colwidth", 120):
                display(self.examples)
