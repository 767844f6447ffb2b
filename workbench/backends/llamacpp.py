"""In-process llama.cpp (`llama-cpp-python`, the optional extra `llamacpp`) on a GGUF file.

A single-stream CPU path (README, "Backend speed on this machine": ~55 useful tok/s one request at a
time on the embedded Q4_1 GGUF, prompt passes included), with the GGUF's own chat template. One
request at a time (a llama.cpp context is not thread-safe).
Logprobs need a context built with `logits_all=True`; the judge gets one of those lazily, so plain
generation does not pay for its vocab-sized logits buffer.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..errors import ModelSpecError
from . import Backend, BackendError, Completion, Request, first_token_top_logprobs


def gguf_path(spec: str) -> Path:
    """A .gguf path, or an embedded model's name (its GGUF is kept beside the converted weights)."""
    from ..models import EMBEDDED, models_dir

    if spec in EMBEDDED:
        manifest = models_dir() / spec / "manifest.json"
        if not manifest.exists():
            raise ModelSpecError(f"The embedded model {spec!r} is not provisioned.",
                                 f"Run `workbench models pull {spec}` (or `make models`) once.")
        return models_dir() / spec / json.loads(manifest.read_text())["gguf_file"]
    path = Path(spec).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelSpecError(f"llamacpp backend: {spec!r} is not a .gguf file.",
                             "Use llamacpp:PATH/TO/MODEL.gguf or llamacpp:smollm2-135m.")
    return path


class LlamaCppBackend(Backend):
    """llama-cpp-python in this process. Parameters are stored as given; the model loads on first use."""

    engine = "llamacpp"
    OPTION_TYPES = {"n_ctx": int, "n_threads": int}

    def __init__(self, model: str = "smollm2-135m", n_ctx: int = 2048, n_threads: int | None = None):
        self.model = model              # a .gguf path or an embedded model's name
        self.n_ctx = n_ctx              # context window (prompt + completion)
        self.n_threads = n_threads      # None: all cores
        self.concurrency = 1
        self.path = gguf_path(model)
        from ..models import sha256_file

        self.name = f"llamacpp:{self.path.name}@{_cached_sha(self.path, sha256_file)[:12]}"
        self._llm = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # to Ray workers: settings only; each process loads its own model
        return {**self.__dict__, "_llm": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LlamaCppBackend(model={self.model!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"

    def llm(self, logits_all: bool = False):
        if logits_all not in self._llm:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise BackendError("The llamacpp backend needs `llama-cpp-python`.",
                                   "make llamacpp (builds the wheel once, ~6 min on 2 cores, then caches it), or "
                                   "pip install llama-cpp-python.") from exc
            threads = self.n_threads or os.cpu_count()
            self._llm[logits_all] = Llama(str(self.path), n_ctx=self.n_ctx, n_threads=threads, n_threads_batch=threads,
                                          logits_all=logits_all, verbose=False)
        return self._llm[logits_all]

    def complete(self, request: Request) -> Completion:
        kwargs = dict(max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
                      top_k=request.top_k, seed=request.seed % (2 ** 31))
        if request.min_p > 0:  # at 0, llama-cpp-python's own default (0.05) stays, as before min_p was a setting
            kwargs["min_p"] = request.min_p
        with self._lock:
            llm = self.llm(logits_all=bool(request.logprobs))
            try:
                if request.chat:
                    extra = dict(logprobs=True, top_logprobs=request.logprobs) if request.logprobs else {}
                    response = llm.create_chat_completion(messages=request.messages(), **kwargs, **extra)
                else:
                    extra = dict(logprobs=request.logprobs) if request.logprobs else {}
                    response = llm.create_completion(request.prompt, **kwargs, **extra)
            except ValueError as exc:  # llama.cpp's "Requested tokens exceed context window"
                raise BackendError(f"llama.cpp refused the request: {exc}",
                                   f"Shorten the prompt or max_tokens, or raise n_ctx (now {self.n_ctx}).") from exc
        choice = response["choices"][0]
        text = choice["message"]["content"] if request.chat else choice["text"]
        usage = response.get("usage") or {}
        return Completion(request.key, text or "", int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)),
                          "length" if choice.get("finish_reason") == "length" else "stop", 0,
                          first_token_top_logprobs(choice.get("logprobs"), request.chat))

    def close(self) -> None:
        for llm in self._llm.values():
            llm.close()
        self._llm.clear()


def _cached_sha(path: Path, sha256_file) -> str:
    """The GGUF's sha256, cached beside it by size and mtime (hashing 100 MB each time costs ~0.3 s)."""
    stat = path.stat()
    cache = path.with_name(f".{path.name}.sha256.json")
    key = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    try:
        cache.write_text(json.dumps({"key": key, "sha256": digest}))
    except OSError:
        pass  # a read-only model folder: hash again next time
    return digest


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on loopback, as a child process (tests, benchmarks, and
    a quick local stand-in for a vLLM server):

        with LlamaServer("smollm2-135m") as server:
            generate(prompts, model=server.spec)        # "openai:smollm2@http://127.0.0.1:PORT/v1"

    Measured with 0.3.36: it serves one request at a time (README); `--interrupt_requests False` so a new
    request does not cut off a running one; SIGTERM may not stop it, so `stop()` falls back to SIGKILL.
    """

    def __init__(self, model: str = "smollm2-135m", port: int | None = None, alias: str = "smollm2",
                 n_threads: int = 1, n_ctx: int = 2048, log_file: str | os.PathLike | None = None):
        self.model = model                  # a .gguf path or an embedded model's name
        self.port = port or _free_port()    # fixed across restarts, so a client can reconnect
        self.alias = alias                  # the model name the server answers to
        self.n_threads = n_threads          # 1: no multi-second stalls on a busy 2-core machine
        self.n_ctx = n_ctx
        self.log_file = log_file            # server output (None: discarded)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"openai:{self.alias}@{self.url}"

    def start(self, timeout: float = 60.0) -> "LlamaServer":
        import subprocess
        import sys
        import time
        import urllib.request

        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path(self.model)),
                   "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
                   "--n_ctx", str(self.n_ctx), "--interrupt_requests", "False", "--logits_all", "True"]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"llama_cpp.server exited with code {self.process.returncode} at start.",
                                   "Run the command by hand to see why: " + " ".join(command))
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise BackendError(f"llama_cpp.server did not answer on {self.url} within {timeout:.0f} s.",
                           "Check the log file, or raise the timeout on a busy machine.")

    def stop(self, grace: float = 3.0) -> None:
        import signal
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would (what the resume tests need)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
