"""generate(): schema, reproducibility, bad input, runs and resume (tiny model; one real-model test file)."""
import warnings

import pandas as pd
import pytest

from workbench import Run
from workbench.errors import InputDataError, RunConfigError
from workbench.sampling import SAMPLE_COLUMNS, generate
from workbench.tasks import get_task

FAST = dict(max_new_tokens=12, batch_size=4)


def test_rows_and_schema(tiny):
    prompts = get_task("arithmetic", n=5)
    samples = generate(prompts, model=tiny, n_per_prompt=3, **FAST)
    assert len(samples) == 15
    assert list(samples.columns[: len(SAMPLE_COLUMNS)]) == SAMPLE_COLUMNS
    assert samples["sample_id"].is_unique
    assert set(samples["finish_reason"]) <= {"stop", "length"}
    assert (samples["n_completion_tokens"] <= 12).all()
    assert (samples.loc[samples["finish_reason"] == "length", "n_completion_tokens"] == 12).all()
    assert samples["reference"].notna().all()  # task columns ride along
    assert list(samples["prompt_id"]) == [p for p in prompts["prompt_id"] for _ in range(3)]


def test_same_seed_same_rows_other_seed_other_rows(tiny):
    prompts = get_task("instructions", n=6)
    a = generate(prompts, model=tiny, seed=1, **FAST)
    b = generate(prompts, model=tiny, seed=1, **dict(FAST, batch_size=2))  # other batching, same rows
    c = generate(prompts, model=tiny, seed=2, **FAST)
    pd.testing.assert_frame_equal(a, b)
    assert not set(a["sample_id"]) & set(c["sample_id"])
    assert (a["completion"] != c["completion"]).any()


def test_hf_engine_gives_same_schema(tiny):
    prompts = get_task("arithmetic", n=3)
    fast = generate(prompts, model=tiny, temperature=0, engine="fast", **FAST)
    hf = generate(prompts, model=tiny, temperature=0, engine="hf", **FAST)
    assert list(fast.columns) == list(hf.columns)
    assert list(fast["completion"]) == list(hf["completion"])  # greedy: both are exact


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_new_tokens=0), "max_new_tokens must be positive"),
    (dict(max_new_tokens=-3), "max_new_tokens must be positive"),
    (dict(n_per_prompt=0), "n_per_prompt"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(max_new_tokens=10_000), "leaves no room"),
])
def test_bad_parameters(tiny, kwargs, needle):
    with pytest.raises(InputDataError, match=needle) as info:
        generate(["hello"], model=tiny, **kwargs)
    assert "Fix:" in str(info.value)


def test_zero_prompts(tiny):
    with pytest.raises(InputDataError, match="zero prompts"):
        generate(pd.DataFrame({"prompt": []}), model=tiny)
    with pytest.raises(InputDataError, match="no 'prompt' column"):
        generate(pd.DataFrame({"text": ["a"]}), model=tiny)


def test_long_prompt_truncated_with_warning_and_counted(tiny, tmp_path):
    run = Run(tmp_path / "run")
    long_prompt = "word " * 400  # the tiny model's context is 256 tokens
    with pytest.warns(UserWarning, match="longer than the context"):
        samples = generate([long_prompt, "short"], model=tiny, run=run, max_new_tokens=8)
    assert list(samples["prompt_truncated"]) == [True, False]
    assert samples.loc[0, "n_prompt_tokens"] == 256 - 8
    assert run.ledger()["truncated_prompts"].sum() == 1
    assert run.summary()["truncated_prompts"].sum() == 1


def test_run_checkpoints_and_resumes_without_duplicates(tiny, tmp_path):
    run = Run(tmp_path / "run")
    prompts = get_task("instructions", n=10)
    first = generate(prompts.head(6), model=tiny, run=run, checkpoint_every=2, **FAST)
    assert len(run.parts("samples")) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a different prompt set is a different config: refused
        with pytest.raises(RunConfigError, match="different configuration"):
            generate(prompts, model=tiny, run=run, checkpoint_every=2, **FAST)
    again = generate(prompts.head(6), model=tiny, run=run, checkpoint_every=2, **FAST)
    assert len(run.parts("samples")) == 3  # nothing regenerated
    pd.testing.assert_frame_equal(first, again)


def test_config_mismatch_refused_and_nothing_lost(tiny, tmp_path):
    run = Run(tmp_path / "run")
    prompts = get_task("arithmetic", n=4)
    generate(prompts, model=tiny, run=run, **FAST)
    before = {p.name: p.read_bytes() for p in run.parts("samples")}
    with pytest.raises(RunConfigError) as info:
        generate(prompts, model=tiny, run=run, temperature=0.3, **FAST)
    message = str(info.value)
    assert "temperature: run has 0.8, now 0.3" in message and "new run folder" in message
    assert {p.name: p.read_bytes() for p in run.parts("samples")} == before
    assert len(run.read("samples")) == 4


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_min_p_on_both_engines(tiny, engine):
    """min_p filters what each engine samples: near 1 it leaves only the top token (greedy text), at 0.3 it
    narrows the draws; it is recorded (column, ids) only when set."""
    prompts = get_task("arithmetic", n=3)
    settings = dict(model=tiny, engine=engine, temperature=1.0, top_k=0, top_p=1.0, n_per_prompt=4, **FAST)
    greedy = generate(prompts, model=tiny, engine=engine, temperature=0, **FAST)
    plain = generate(prompts, **settings)
    narrow = generate(prompts, min_p=0.3, **settings)
    only_top = generate(prompts, min_p=0.999, **settings)
    assert list(only_top["completion"]) == [c for c in greedy["completion"] for _ in range(4)]
    assert list(plain["completion"]) != list(only_top["completion"])
    assert "min_p" not in plain.columns and list(plain.columns) == list(greedy.columns)
    assert list(narrow.columns) == list(plain.columns[:15]) + ["min_p"] + list(plain.columns[15:])
    assert (narrow["min_p"] == 0.3).all() and not set(narrow["sample_id"]) & set(plain["sample_id"])

    def distinct_tokens(frame):  # over all completions; random weights: min_p 0 draws from the whole vocabulary
        return len({t for c in frame["completion"] for t in tiny.tokenizer.encode(c)})
    assert distinct_tokens(narrow) < distinct_tokens(plain)


def test_min_p_zero_leaves_ids_columns_and_run_config_as_before(tiny, tmp_path):
    from workbench.sampling import SamplingParams, _constant_columns, _identity_parts, _sample_identity

    params = SamplingParams(n_per_prompt=2, temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=16, seed=3)
    prompt = {"prompt": "What is 2+2?", "chat": True, "prompt_id": "p-1"}
    key = ("tiny", "fp32", None)
    # the hash inputs before min-p existed, and the id and seed the code computed for them then
    assert _identity_parts(key, params, prompt, 1) == (*key, "What is 2+2?", True, 0.7, 0.9, 40, 16, None, 3, 1)
    assert _sample_identity(key, params, prompt, 1) == ("ce05b9d14158f07c997a", 344418971236629682)
    assert "min_p" not in params.recorded() and "min_p" not in _constant_columns("m", params, "fp32", None, "fast")
    with_min_p = SamplingParams(**{**params.recorded(), "min_p": 0.1})
    assert _sample_identity(key, with_min_p, prompt, 1)[0] != "ce05b9d14158f07c997a"
    assert _sample_identity(key, with_min_p, prompt, 1)[1] == 344418971236629682  # the seed does not depend on it
    assert with_min_p.recorded()["min_p"] == 0.1
    # a run made without min_p records no min_p, resumes with min_p=0, and refuses another min_p
    run = Run(tmp_path / "run")
    prompts = get_task("arithmetic", n=2)
    generate(prompts, model=tiny, run=run, **FAST)
    assert not any("min_p" in section for section in run.config.values() if isinstance(section, dict))
    generate(prompts, model=tiny, run=run, min_p=0.0, **FAST)
    with pytest.raises(RunConfigError, match="min_p: run has '<absent>', now 0.2"):
        generate(prompts, model=tiny, run=run, min_p=0.2, **FAST)


@pytest.mark.parametrize("min_p", [1.0, -0.1, 1.5])
def test_min_p_out_of_range(tiny, min_p):
    with pytest.raises(InputDataError, match=r"min_p must be in \[0, 1\)") as info:
        generate(["hello"], model=tiny, min_p=min_p)
    assert "Fix:" in str(info.value)


def test_backends_receive_min_p():
    """The backend path: the request carries min_p; the OpenAI backend sends it (and top_k) in extra_body
    only when set, so a min_p 0 request is the same as before."""
    from types import SimpleNamespace

    from workbench.backends import Backend, Completion
    from workbench.backends.openai_backend import OpenAIBackend

    class Recorder(Backend):
        name, engine = "recorder", "recorder"

        def __init__(self):
            self.requests = []

        def complete(self, request):
            self.requests.append(request)
            return Completion(request.key, "ok", 3, 1, "stop")

    recorder = Recorder()
    off = generate(["a", "b"], model=recorder, max_new_tokens=4)
    on = generate(["a", "b"], model=recorder, max_new_tokens=4, min_p=0.25)
    assert [r.min_p for r in recorder.requests] == [0.0, 0.0, 0.25, 0.25]
    assert "min_p" not in off.columns and (on["min_p"] == 0.25).all()
    assert not set(off["sample_id"]) & set(on["sample_id"])

    sent = []
    response = SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="hi"), finish_reason="stop",
                                                        logprobs=None)],
                               usage=SimpleNamespace(prompt_tokens=2, completion_tokens=1))
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", check_model=False)
    backend._client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(
        create=lambda **kwargs: sent.append(kwargs) or response)))
    for request in recorder.requests[1:3]:
        backend.complete(request)
    assert sent[0]["extra_body"] == {"top_k": 50} and sent[1]["extra_body"] == {"top_k": 50, "min_p": 0.25}
    backend.top_k = False
    backend.complete(recorder.requests[0])
    assert "extra_body" not in sent[2]
