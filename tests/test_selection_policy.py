"""One selection rule, three paths: `accept`, `LiveSelection.select` and the threshold explorer give the same
Selection for the same policy, and a saved selection reloads into the same accepted set in each."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import Run
from workbench.errors import InputDataError
from workbench.explorer import ExplorerState
from workbench.live import LiveSelection
from workbench.select import Selection, SelectionPolicy, accept, combine


def _table(rng: np.random.Generator, n: int, nan_share: float) -> pd.DataFrame:
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "prompt_id": [f"p{i // 3}" for i in range(n)], "task": "t",
        "completion": [f"w{rng.integers(0, 6)} w{rng.integers(0, 6)} w{rng.integers(0, 4)}" for _ in range(n)],
        "score__a": rng.uniform(size=n), "score__b": rng.choice([0.0, 0.5, 1.0], size=n)})
    for column in ("score__a", "score__b"):
        frame.loc[rng.uniform(size=n) < nan_share, column] = np.nan
    return frame


policies = st.builds(
    SelectionPolicy,
    thresholds=st.dictionaries(st.sampled_from(["a", "b"]), st.floats(0, 1), max_size=2),
    target_rate=st.none() | st.floats(0, 1),
    rank_by=st.none() | st.sampled_from(["a", "b"]),
    top1_of_k=st.booleans(),
    per_prompt_cap=st.none() | st.integers(1, 3),
    dedup=st.sampled_from([None, "exact", "minhash"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, seed=st.integers(0, 10_000), n=st.integers(0, 60), nan_share=st.floats(0, 0.5),
       n_labels=st.integers(0, 4))
def test_live_selection_equals_accept_on_random_tables_with_nan(policy, seed, n, nan_share, n_labels):
    rng = np.random.default_rng(seed)
    table = _table(rng, n, nan_share)
    labels = {f"s{int(i)}": str(rng.choice(["good", "bad"])) for i in rng.integers(0, max(n, 1), n_labels)} if n else {}
    expected = accept(table, policy, labels=labels)
    got = LiveSelection(table).select(policy, labels=labels)
    assert np.array_equal(got.mask, expected.mask)
    assert list(got.rejected_by) == list(expected.rejected_by)
    assert got.counts == expected.counts
    # the rules as documented: a NaN in a thresholded grader is never accepted unless a human said good
    for name in policy.thresholds:
        nan_rows = table[f"score__{name}"].isna().to_numpy()
        good = table["sample_id"].map(labels).eq("good").to_numpy()
        assert not (expected.mask & nan_rows & ~good).any()


def _run_with(table: pd.DataFrame, path) -> Run:
    run = Run(path)
    run.append("samples", table.drop(columns=[c for c in table if c.startswith("score__")]))
    for grader in ("a", "b"):
        run.append(run.scores_table(grader), pd.DataFrame({"sample_id": table["sample_id"], "score": table[f"score__{grader}"]}))
    return run


def test_saved_selection_reloads_into_the_same_set_in_all_three_paths(tmp_path):
    table = _table(np.random.default_rng(3), 90, 0.1)
    run = _run_with(table, tmp_path / "r")
    explorer = ExplorerState(run=run)
    explorer.set_thresholds(a=0.3)
    explorer.set_mode("target_rate", target_rate=0.6, dedup="exact")
    explorer.label("s5", "good")
    explorer.label("s6", "bad")
    assert "selections/t.parquet" in explorer.save_selection()
    saved = Selection.load(run, 0, "t")
    assert saved.policy == explorer.policy and saved.labels == {"s5": "good", "s6": "bad"}
    graded = run.graded(0)
    paths = {"accept": accept(graded, saved.policy, labels=saved.labels).mask,
             "live": LiveSelection(graded).select(saved.policy, labels=saved.labels).mask,
             "explorer": ExplorerState(run=run, selection="t").accepted_mask,
             "reapply": saved.reapply(graded).mask}
    for name, mask in paths.items():
        assert np.array_equal(mask, saved.mask), name
    assert saved.mask[5] and not saved.mask[6]


def test_selections_are_keyed_so_two_notebooks_do_not_overwrite_each_other(tmp_path):
    table = _table(np.random.default_rng(0), 30, 0.0)
    run = _run_with(table, tmp_path / "r")
    first = accept(table, thresholds={"a": 0.5})
    second = accept(table, thresholds={"a": 0.1})
    assert first.save(run) == "t"
    assert second.save(run, name="explorer") == "explorer"
    combine({"t": first}).save(run)  # a combined selection names itself after its parts
    assert run.selections(0) == ["explorer", "t"]
    assert Selection.load(run, 0, "t").n_accepted == first.n_accepted
    assert Selection.load(run, 0, "explorer").n_accepted == second.n_accepted
    with pytest.raises(InputDataError, match="2 saved selections"):
        Selection.load(run, 0)
    with pytest.raises(InputDataError, match="plain file name"):
        first.save(run, name="../escape")


@pytest.mark.parametrize("params", [
    {"thresholds": {"a": 0.4}, "target_rate": 0.5, "rank_by": "a", "top1_of_k": False, "per_prompt_cap": None,
     "dedup": None, "dedup_threshold": None},                                       # accept()'s old keywords
    {"policy": "target_rate", "thresholds": {"a": 0.4}, "dedup": None, "target_rate": 0.5, "human_labels": {},
     "source": "ThresholdExplorer"},                                                # the old explorer's save
])
def test_old_saved_parameters_give_the_same_policy(params):
    assert Selection(np.zeros(0, bool), np.zeros(0, str), np.zeros(0), params=params).policy == \
        SelectionPolicy(thresholds={"a": 0.4}, target_rate=0.5, rank_by="a" if "rank_by" in params else None)


@pytest.mark.parametrize("values, message", [
    ({"thresholds": {"judge": "high"}}, "select.thresholds.judge: expected a number, got 'high'"),
    ({"thresholds": {"judge": float("nan")}}, "select.thresholds.judge: expected a finite number"),
    ({"target_rate": 1.5}, "select.target_rate must be in"),
    ({"per_prompt_cap": 0}, "select.per_prompt_cap"),
    ({"dedup": "fuzzy"}, "select.dedup: unknown method"),
    ({"threshold": {"a": 1}}, "select: unknown key"),
    ({"schedule": {"a": {"step": 0.1}}}, "select.schedule.a: needs a start"),
])
def test_policy_errors_name_the_key(values, message):
    with pytest.raises(InputDataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        SelectionPolicy.from_dict(values)


def test_schedule_resolves_per_generation_and_old_schedules_under_thresholds_still_load():
    policy = SelectionPolicy.from_dict({"thresholds": {"a": [0.2, 0.4], "b": 0.5}})
    assert policy.schedule == {"a": [0.2, 0.4]} and policy.thresholds == {"b": 0.5}
    assert policy.for_generation(0).thresholds == {"b": 0.5, "a": 0.2}
    assert policy.for_generation(7).thresholds == {"b": 0.5, "a": 0.4}
    with pytest.raises(InputDataError, match="schedule"):
        accept(_table(np.random.default_rng(0), 6, 0.0), policy)


def test_run_owns_the_layout(tmp_path):
    run = Run(tmp_path / "r")
    assert run.generation_dir(2) == run.path / "gen-002"
    assert run.checkpoint_dir(1) == run.path / "gen-001" / "checkpoint"
    assert run.metrics_path(0) == run.path / "gen-000" / "metrics.json"
    assert run.config_key("grade", "judge", 3) == "grade:judge:gen-003"
    assert run.update_metrics(0, eval={"x": np.float32(1.5)})["eval"] == {"x": 1.5}
    assert run.metrics(0) == {"generation": 0, "eval": {"x": 1.5}} and run.metrics(5) == {}
    run.add_label("s1", "good", "ada")
    run.add_label("s1", None)
    run.add_label("s2", "bad")
    assert run.labels() == {"s2": "bad"}  # a cleared label drops out
    # a nested run (the evaluation's) keeps its own manifest and ledger: the parent neither lists nor restores it
    run.eval_run(0).append("samples", pd.DataFrame({"sample_id": ["e"]}), log={"stage": "generate"})
    run.append("samples", pd.DataFrame({"sample_id": ["x"]}), log={"stage": "generate"})
    assert set(run.manifest["tables"]) == {"gen-000/labels", "gen-000/samples"}
    assert len(run.ledger()) == 1
