"""The loop's typed config: path-named errors before any work, the YAML forms it accepts, and the record
it writes into a run folder, which must stay what the code before the typed config recorded (b04a374)
so that run folders made then still resume."""
import inspect

import pytest
import yaml

from workbench.cli import main
from workbench.errors import InputDataError
from workbench.sampling import generate
from workbench.config import from_fields
from workbench.loop import run
from workbench.loop_config import CollapseConfig, EvalConfig, GenerateConfig, LoopConfig, MixPolicy, PriceConfig
from workbench.select import SelectionPolicy
from workbench.store import Run
from workbench.train import TrainConfig


@pytest.mark.parametrize("values, message", [
    ({"graders": ["verifier", "judge"], "select": {"thresholds": {"judge": "high"}}},
     "select.thresholds.judge: expected a number, got 'high'"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate: expected a number, got 'fast'"),
    ({"train": {"lr": 1e-4}}, "train.lr: unknown key"),
    ({"eval": {"heldout_problemz": 10}}, "eval.heldout_problemz: unknown key"),
    ({"generate": {"n_per_prompt": 2.5}}, "generate.n_per_prompt: expected a whole number, got 2.5"),
    ({"generate": {"temperature": -1}}, "generate: temperature must be >= 0"),
    ({"collapse": {"stop": "yes"}}, "collapse.stop: expected true or false, got 'yes'"),
    ({"collapse": {"diversity_metric": "distinct_9"}}, "collapse: diversity_metric 'distinct_9' is not measured"),
    ({"price": {"cpu_hour": "free"}}, "price.cpu_hour: expected a number, got 'free'"),
    ({"mix": "keep_everything"}, "mix: unknown data-mix policy 'keep_everything'"),
    ({"mix": {"keep_real": "lots"}}, "mix.keep_real: expected a number, got 'lots'"),
    ({"mix": {"keep_real": 1.5}}, r"mix: keep_real fraction must be in \[0, 1\)"),
    ({"eval": {"heldout_texts": "all"}}, "eval.heldout_texts: expected a whole number, got 'all'"),
    ({"graders": "verifier"}, "graders: expected a list, got 'verifier'"),
    ({"select": {"thresholdz": {"verifier": 1.0}}}, r"select: unknown key\(s\) \['thresholdz'\]"),
    ({"select": {"thresholds": {"judge": 0.5}}}, r"select: reads grader\(s\) \['judge'\], which are not in graders"),
    ({"generatoins": 3}, "generatoins: unknown key"),
])
def test_a_wrong_key_is_named_by_its_path(values, message):
    with pytest.raises(InputDataError, match=message):
        LoopConfig.from_dict(values)


def test_sections_are_typed_and_yaml_forms_still_work():
    config = LoopConfig.from_dict({
        "graders": ["verifier", "judge"],
        "select": {"thresholds": {"verifier": [0.0, 1.0], "judge": {"start": 0.5, "step": 0.1, "max": 0.65}}},
        "generate": {"n_per_prompt": 2}, "train": {"epochs": 2}, "eval": {"heldout_problems": 6},
        "collapse": {"stop": True}, "price": {"cpu_hour": 0.2}})
    assert isinstance(config.generate, GenerateConfig) and isinstance(config.select, SelectionPolicy)
    assert isinstance(config.train, TrainConfig) and isinstance(config.eval, EvalConfig)
    assert isinstance(config.collapse, CollapseConfig) and isinstance(config.price, PriceConfig)
    # the older shape, a schedule written under thresholds, is a schedule
    assert config.select.for_generation(0).thresholds == {"verifier": 0.0, "judge": 0.5}
    assert config.select.for_generation(5).thresholds == {"verifier": 1.0, "judge": 0.65}
    # a section written in YAML starts from its dataclass defaults (generate()'s own: max_new_tokens 128)
    assert (config.generate.n_per_prompt, config.generate.max_new_tokens) == (2, 128)
    assert LoopConfig().generate.max_new_tokens == 32  # the loop's default section
    assert (config.price.cpu_hour, config.price.gpu_hour) == (0.2, 0.0)
    # every data-mix form
    for form, spec in [("replace", "replace"), ("accumulate", "accumulate"), ({"keep_real": 0.1}, {"keep_real": 0.1}),
                       ({"accumulate_subsample": 512}, {"accumulate_subsample": 512}),
                       ("keep_real(0.1)", {"keep_real": 0.1})]:
        mixed = LoopConfig.from_dict({"mix": form})
        assert mixed.mix.spec == spec and mixed.to_record()["mix"] == form
    # Python: a section as its dataclass or as its dict, checked the same way
    assert LoopConfig(generate={"n_per_prompt": 3}).generate == GenerateConfig(n_per_prompt=3)
    with pytest.raises(InputDataError, match="train.epochs: expected a number"):
        LoopConfig(train={"epochs": "two"})


def test_generate_section_mirrors_generate_defaults():
    """A partial `generate:` section fills in generate()'s defaults, as before the typed config: the sampled
    ids of a resumed run depend on it."""
    parameters = inspect.signature(generate).parameters
    for name, value in vars(GenerateConfig()).items():
        if not name.startswith("_"):
            assert parameters[name].default == value, name


def test_train_seed_is_the_loops_unless_set():
    assert LoopConfig(seed=5).train_config(2).seed == 7
    assert LoopConfig.from_dict({"seed": 5, "train": {"seed": 0}}).train_config(2).seed == 0


# What the loop recorded under `loop` in config.yaml before its config was typed (asdict of the old
# LoopConfig, b04a374): the compatibility contract. A run folder holding one of these must resume.
OLD_DEFAULT_RECORD = {
    "run": "data/runs/loop", "model": "smollm2-135m", "task": "arithmetic", "task_params": {"n": 64},
    "fresh_prompts": True, "generations": 3,
    "generate": {"n_per_prompt": 4, "temperature": 0.8, "max_new_tokens": 32}, "graders": ["verifier"],
    "select": {"thresholds": {"verifier": 1.0}}, "mix": "replace", "real_examples": 256, "start_from": "base",
    "train": {}, "eval": {}, "collapse": {}, "price": {"cpu_hour": 0.1, "gpu_hour": 3.0, "per_million_tokens": 0.0},
    "seed": 0}
SOME_SETTINGS = {
    "run": "data/runs/star", "task_params": {"n": 12}, "generations": 2,
    "generate": {"n_per_prompt": 2, "max_new_tokens": 8}, "graders": ["verifier", "judge", "heuristics"],
    "select": {"thresholds": {"heuristics": [0.0, 0.1]}}, "mix": {"keep_real": 0.2}, "real_examples": 20,
    "train": {"epochs": 1, "tokens_per_batch": 128}, "eval": {"heldout_problems": 6, "heldout_texts": None},
    "collapse": {"max_diversity_drop": 10, "stop": True}, "price": {"cpu_hour": 0.2}}
OLD_SOME_SETTINGS_RECORD = {
    "run": "data/runs/star", "model": "smollm2-135m", "task": "arithmetic", "task_params": {"n": 12},
    "fresh_prompts": True, "generations": 2, "generate": {"n_per_prompt": 2, "max_new_tokens": 8},
    "graders": ["verifier", "judge", "heuristics"], "select": {"thresholds": {"heuristics": [0.0, 0.1]}},
    "mix": {"keep_real": 0.2}, "real_examples": 20, "start_from": "base",
    "train": {"epochs": 1, "tokens_per_batch": 128}, "eval": {"heldout_problems": 6, "heldout_texts": None},
    "collapse": {"max_diversity_drop": 10, "stop": True}, "price": {"cpu_hour": 0.2}, "seed": 0}
OLD_SMOKE_VERIFIER_ARM_RECORD = {  # workbench.experiments.self_improvement_configs(root, smoke=True)["verifier"]
    "run": "ROOT/verifier", "model": "smollm2-135m", "task": "arithmetic",
    "task_params": {"n": 6, "digits": 1, "operators": "+-*/"}, "fresh_prompts": True, "generations": 1,
    "generate": {"n_per_prompt": 4, "temperature": 1.0, "max_new_tokens": 16},
    "graders": ["verifier_strict", "verifier"], "select": {"thresholds": {"verifier": 1.0}, "per_prompt_cap": 2},
    "mix": "replace", "real_examples": 256, "start_from": "last", "train": {"epochs": 1, "learning_rate": 0.0001},
    "eval": {"heldout_problems": 8, "answer_tokens": 16, "heldout_texts": 6, "diversity_prompts": 4,
             "diversity_tokens": 16},
    "collapse": {}, "price": {"cpu_hour": 0.1, "gpu_hour": 3.0, "per_million_tokens": 0.0}, "seed": 0}
OLD_COLLAPSE_ARM_RECORD = {  # collapse_configs(root)["keep_real_0.1"] before experiment 2 was redone (issue 15)
    "run": "ROOT/keep_real_0.1", "model": "smollm2-135m", "task": "corpus", "task_params": {"n": 64},
    "fresh_prompts": False, "generations": 5,
    "generate": {"n_per_prompt": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 64},
    "graders": ["heuristics"], "select": {}, "mix": {"keep_real": 0.1}, "real_examples": None,
    "start_from": "last", "train": {"epochs": 0, "max_steps": 8, "learning_rate": 5e-05},
    "eval": {"heldout_texts": None, "diversity_prompts": 28, "diversity_tokens": 64},
    "collapse": {"max_perplexity_rise": 0.1, "max_diversity_drop": 0.1},
    "price": {"cpu_hour": 0.1, "gpu_hour": 3.0, "per_million_tokens": 0.0}, "seed": 0}


def test_the_record_is_what_the_loop_recorded_before(tmp_path):
    from workbench.experiments import collapse_configs, self_improvement_configs

    assert LoopConfig().to_record() == OLD_DEFAULT_RECORD
    assert LoopConfig.from_dict({}).to_record() == OLD_DEFAULT_RECORD
    assert LoopConfig.from_dict(SOME_SETTINGS).to_record() == OLD_SOME_SETTINGS_RECORD
    smoke = self_improvement_configs("ROOT", smoke=True)["verifier"]
    assert smoke.to_record() == OLD_SMOKE_VERIFIER_ARM_RECORD
    # experiment 2's arms changed with its redesign; a run folder of the old arms still reads its record back
    assert LoopConfig.from_dict(OLD_COLLAPSE_ARM_RECORD).to_record() == OLD_COLLAPSE_ARM_RECORD
    arms = collapse_configs("ROOT")
    assert set(arms) == {"replace", "keep_real_0.1", "accumulate", "detector_replace_temp_0.7", "replace_top_p_0.9",
                         "replace_temp_0.7"}
    assert arms["detector_replace_temp_0.7"].to_record()["mix"] == {"policy": "replace", "resample_by": "realism",
                                                             "weight": "odds", "temperature": 1.0}
    assert arms["detector_replace_temp_0.7"].graders == ["heuristics", "realism"]
    assert LoopConfig.from_dict(arms["detector_replace_temp_0.7"].to_record()).to_record() == arms["detector_replace_temp_0.7"].to_record()
    assert arms["replace_temp_0.7"].generate.temperature == 0.7 and arms["replace_top_p_0.9"].generate.top_p == 0.9
    # a run folder that holds an old record accepts the same settings again, and refuses others
    old_run = Run(tmp_path / "old")
    old_run.check_config("loop", OLD_SOME_SETTINGS_RECORD)
    old_run.check_config("loop", LoopConfig.from_dict(SOME_SETTINGS).to_record())
    with pytest.raises(Exception, match="generate.max_new_tokens"):
        changed = {**SOME_SETTINGS, "generate": {"n_per_prompt": 2, "max_new_tokens": 9}}
        old_run.check_config("loop", LoopConfig.from_dict(changed).to_record())


def test_cli_refuses_a_bad_config_before_any_work(tmp_path, capsys):
    config = {"run": str(tmp_path / "run"), "model": str(tmp_path / "no-model-here"), "task_params": {"n": 4},
              "graders": ["verifier", "judge"], "select": {"thresholds": {"judge": "high"}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["loop", str(path)]) == 2
    assert "select.thresholds.judge: expected a number, got 'high'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "gen-000" / "samples").exists() and not (tmp_path / "run").exists()
    # the same through the Python entry point
    with pytest.raises(InputDataError, match="select.thresholds.judge"):
        run(config, say=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_finetune_cli_checks_its_fields(tmp_path, capsys):
    data = tmp_path / "missing.parquet"
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "out"), "--set", "epochs=two"]) == 2
    assert "epochs: expected a number, got 'two'" in capsys.readouterr().err
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "out"), "--set", "epochz=2"]) == 2
    assert "epochz: unknown key" in capsys.readouterr().err


def test_from_fields_checks_any_dataclass():
    assert from_fields(EvalConfig, {"heldout_problems": 5}, "eval").heldout_problems == 5
    with pytest.raises(InputDataError, match=r"eval.heldout_problems: expected a whole number, got True"):
        from_fields(EvalConfig, {"heldout_problems": True}, "eval")
    with pytest.raises(InputDataError, match=r"graders\[1\]: expected a string, got 3"):
        from_fields(LoopConfig, {"graders": ["verifier", 3]})
    assert MixPolicy.parse({"accumulate_subsample": 64}).spec == {"accumulate_subsample": 64}
