"""The openai backend against a real OpenAI-compatible server (llama-cpp-python's, serving the embedded
GGUF on loopback), and the in-process llama.cpp backend. `make test` installs llama-cpp-python[server]
from a wheel it builds once and caches (see Makefile: llamacpp)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from openai_proxy import RecordingProxy
from workbench import generate
from workbench.backends import BackendError, get_backend
from workbench.backends.llamacpp import LlamaServer
from workbench.graders import SelfJudge, Verifier, grade
from workbench.metrics import judge_audit
from workbench.store import Run
from workbench.tasks import get_task

SECRET = "sk-workbench-test-SECRET-4f2a9c"
FAST = "?max_retries=1&concurrency=2"


@pytest.fixture(scope="module")
def server(real_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with LlamaServer("smollm2-135m", log_file=log) as running:
        yield running


def spec(url: str, options: str = FAST) -> str:
    return f"openai:smollm2@{url}{options}"


def settle(server) -> None:
    """Put the server's prompt cache in one known state. llama.cpp's server re-reads a prompt identical to
    its previous request by replaying one token on the cached prefix, whose floats differ slightly from
    reading the prompt anew; measured here, that flipped one of 8 sampled texts when two passes reached the
    server in different orders. Same state + same order (concurrency 1) -> same text for the same seed."""
    import openai

    openai.OpenAI(base_url=server.url, api_key="unused").chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=1)


def test_openai_backend_rows_match_the_embedded_schema_and_are_reproducible(server, real, tmp_path):
    prompts = get_task("arithmetic", n=4)
    run = Run(tmp_path / "api")
    one_at_a_time = spec(server.url, "?max_retries=1&concurrency=1")
    settle(server)
    samples = generate(prompts, model=one_at_a_time, n_per_prompt=2, max_new_tokens=16, seed=3, run=run)
    local = generate(prompts, model=real, n_per_prompt=2, max_new_tokens=16, seed=3)
    assert list(samples.columns) == list(local.columns)
    assert samples["sample_id"].is_unique and len(samples) == 8
    assert (samples["engine"] == "openai").all() and (samples["n_prompt_tokens"] > 0).all()
    assert samples["completion"].str.len().gt(0).all()
    # the same seed gives the same text (each sample carries its own seed to the server)
    settle(server)
    again = generate(prompts, model=one_at_a_time, n_per_prompt=2, max_new_tokens=16, seed=3)
    assert again["completion"].tolist() == samples["completion"].tolist()
    ledger = run.ledger()
    generated = ledger[ledger["stage"] == "generate"]
    assert generated["completion_tokens"].sum() == samples["n_completion_tokens"].sum() > 0
    assert generated["prompt_tokens"].sum() == samples["n_prompt_tokens"].sum()
    assert "retries" in generated and generated["retries"].sum() == 0


def test_server_killed_mid_generation_then_restarted_completes_every_sample_once(server, tmp_path):
    prompts = get_task("arithmetic", n=10)
    run = Run(tmp_path / "killed")
    model = spec(server.url, "?max_retries=1&concurrency=1")
    kwargs = dict(n_per_prompt=2, max_new_tokens=24, seed=0, checkpoint_every=2)

    def kill_after_first_part():
        deadline = time.monotonic() + 120
        while not run.parts("samples") and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()

    killer = threading.Thread(target=kill_after_first_part)
    settle(server)
    killer.start()
    with pytest.raises(BackendError, match="failed 2 times in a row"):
        generate(prompts, model=model, run=run, **kwargs)
    killer.join()
    kept = run.read("samples")
    assert 0 < len(kept) < 20  # stopped halfway, and what finished before the kill was kept
    server.start()
    samples = generate(prompts, model=model, run=run, **kwargs)
    stored = run.read("samples")
    assert len(stored) == 20 and stored["sample_id"].is_unique and len(samples) == 20
    # the rows kept from before the kill are the ones the restarted server gives for the same seeds
    settle(server)
    fresh = generate(prompts, model=model, **kwargs).set_index("sample_id")["completion"]
    assert (kept.set_index("sample_id")["completion"] == fresh.loc[kept["sample_id"]]).all()


def test_retries_429_and_503_with_backoff_then_succeeds(server, tmp_path):
    with RecordingProxy(server.url.removesuffix("/v1")) as proxy:
        proxy.faults = ["429", "503", "429"]
        run = Run(tmp_path / "retry")
        backend = get_backend(f"openai:smollm2@{proxy.url}?max_retries=4&concurrency=1")
        backend.backoff_base = 0.05
        backend.prices["smollm2"] = (1.0, 2.0)  # USD per 1M input / output tokens: a user-extended price table
        samples = generate(get_task("arithmetic", n=2), model=backend, max_new_tokens=8, run=run)
    assert len(samples) == 2
    ledger = run.ledger()
    assert ledger["retries"].sum() == 3
    expected = (samples["n_prompt_tokens"].sum() * 1.0 + samples["n_completion_tokens"].sum() * 2.0) / 1e6
    assert ledger["cost_usd"].sum() == pytest.approx(expected, rel=1e-3) and expected > 0
    posts = [r for r in proxy.requests if r["path"].endswith("/chat/completions")]
    assert len(posts) == 5  # 3 refused + 2 answered


@pytest.mark.parametrize("fault, message", [("garbage", "not JSON|not an OpenAI completion"),
                                            ("no_choices", "without choices")])
def test_malformed_responses_say_what_was_wrong(server, fault, message, tmp_path):
    with RecordingProxy(server.url.removesuffix("/v1")) as proxy:
        proxy.faults = [fault]
        run = Run(tmp_path / fault)
        with pytest.raises(BackendError, match=message):
            generate(get_task("arithmetic", n=2), model=spec(proxy.url, "?concurrency=1"), max_new_tokens=8, run=run)
    assert run.read("samples").empty  # nothing half-made was stored


def test_wrong_model_name_and_unreachable_server_give_clear_errors(server):
    with pytest.raises(BackendError, match=r"does not serve model 'nope'.*smollm2"):
        generate(["Hi"], model=f"openai:nope@{server.url}", max_new_tokens=4)
    with pytest.raises(BackendError, match="Cannot reach"):
        generate(["Hi"], model="openai:smollm2@http://127.0.0.1:9/v1", max_new_tokens=4)


def test_self_judge_over_the_api_uses_logprobs_and_matches_the_local_judge(server, real):
    samples = generate(get_task("arithmetic", n=6), model=real, n_per_prompt=2, max_new_tokens=16, seed=1)
    api_judge = SelfJudge(model=spec(server.url))
    remote = api_judge.score(samples)
    local = SelfJudge(model=real).score(samples)
    assert api_judge.method_ == "logprobs" and remote.between(0, 1).all()
    # the server runs the Q4_1 GGUF that the local fp32 weights were dequantized from: close, not equal
    assert np.abs(remote - local).mean() < 0.1, (remote.round(3).tolist(), local.round(3).tolist())
    audit = judge_audit(remote, Verifier().score(samples), method=api_judge.method_)
    assert audit["method"] == "logprobs"
    with RecordingProxy(server.url.removesuffix("/v1")) as proxy:  # a server that returns no logprobs
        proxy.strip_logprobs = True
        parsed_judge = SelfJudge(model=spec(proxy.url))
        parsed = parsed_judge.score(samples)
    assert parsed_judge.method_ == "parsed"
    assert set(parsed.dropna().unique()) <= {0.0, 1.0}
    # the greedy reply agrees with the more likely of Yes/No wherever the reply is a verdict
    verdicts = parsed.notna()
    assert ((remote[verdicts] >= 0.5) == (parsed[verdicts] == 1.0)).mean() >= 0.8


def test_api_key_never_reaches_a_run_folder_a_log_a_notebook_or_a_report(server, tmp_path, monkeypatch, capfd):
    from workbench.report import report

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with RecordingProxy(server.url.removesuffix("/v1")) as proxy:
        model = spec(proxy.url)
        run = Run(tmp_path / "secret-run")
        samples = generate(get_task("arithmetic", n=2), model=model, max_new_tokens=8, run=run)
        grade(samples, [SelfJudge(model=model)], run=run)
        with pytest.raises(BackendError) as error:
            generate(["Hi"], model=f"openai:nope@{proxy.url}", max_new_tokens=4)
        assert SECRET not in str(error.value) and SECRET not in repr(get_backend(model))
        paths = report(run_name=str(tmp_path / "secret-notebooks"), smoke=True, out_dir=tmp_path / "report",
                       notebooks=["01_generate", "02_grade_and_diversity"],
                       parameters={"01_generate": {"model": model}, "02_grade_and_diversity": {"model": model}})
    # the key did go to the server (so the check below is not vacuous) ...
    assert any({k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {SECRET}"
               for r in proxy.requests)
    # ... and nowhere else: run folders, executed notebooks, HTML reports, this process's output
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)
    # notebook 02's judge audit says how the judge was read over the API
    assert "'method': 'logprobs'" in (tmp_path / "report" / "executed" / "02_grade_and_diversity.ipynb").read_text()
    notebook_samples = Run(tmp_path / "secret-notebooks").read("samples")
    assert len(notebook_samples) and (notebook_samples["engine"] == "openai").all()


def test_llamacpp_in_process_backend(real, tmp_path):
    prompts = get_task("arithmetic", n=3)
    run = Run(tmp_path / "llamacpp")
    samples = generate(prompts, model="llamacpp:smollm2-135m", n_per_prompt=2, max_new_tokens=16, seed=2, run=run)
    local = generate(prompts, model=real, n_per_prompt=1, max_new_tokens=4)
    assert list(samples.columns) == list(local.columns)
    assert len(samples) == 6 and (samples["engine"] == "llamacpp").all()
    assert samples["model"].iloc[0].startswith("llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf@")
    again = generate(prompts, model="llamacpp:smollm2-135m", n_per_prompt=2, max_new_tokens=16, seed=2)
    assert again["completion"].tolist() == samples["completion"].tolist()
    judge = SelfJudge(model="llamacpp:smollm2-135m")
    scores = judge.score(samples)
    assert judge.method_ == "logprobs" and scores.between(0, 1).all()
    with pytest.raises(Exception, match="not a .gguf file"):
        get_backend("llamacpp:/nonexistent/model.bin")


def test_backend_specs_options_and_pickling_without_a_server():
    import pickle

    from workbench.backends.openai_backend import _RateLimiter

    backend = get_backend("openai:m@http://10.0.0.1:8000/v1?concurrency=3&rpm=600&top_k=false")
    assert (backend.model, backend.base_url, backend.concurrency, backend.rpm, backend.top_k) == (
        "m", "http://10.0.0.1:8000/v1", 3, 600.0, False)
    assert backend.settings() == {"backend": "openai", "model": "openai:m"}  # no URL, no key
    clone = pickle.loads(pickle.dumps(backend))  # what Ray does with a grader holding a backend
    assert clone.base_url == backend.base_url and clone._client is None
    for bad, message in [("openai:m@http://x/v1?colour=1", "Unknown option 'colour'"),
                         ("openai:m@http://x/v1?top_k=maybe", "not a flag"),
                         ("openai:@http://x/v1", "names no model")]:
        with pytest.raises(Exception, match=message):
            get_backend(bad)
    with pytest.raises(BackendError, match="concurrency"):
        get_backend("openai:m@http://x/v1?concurrency=0")
    limiter = _RateLimiter(rpm=600)  # 0.1 s between request starts
    started = time.monotonic()
    for _ in range(4):
        limiter.wait()
    assert time.monotonic() - started >= 0.3
