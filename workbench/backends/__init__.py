"""Generation backends other than the embedded transformers model: where completions come from.

A backend turns one request (a chat message list or a plain text prompt, sampling settings, a seed)
into one `Completion`. `workbench.generate`, the self-judge and the loop take a backend wherever they
take a model, so the run store, graders and notebooks work unchanged on any of them:

    "openai:MODEL@http://127.0.0.1:8000/v1"   any OpenAI-compatible server (vLLM, TGI, llama.cpp server,
                                              a hosted API); options after "?": concurrency, rpm,
                                              timeout, max_retries, api_key_env, top_k (see OpenAIBackend)
    "openai:MODEL"                            base URL from $OPENAI_BASE_URL
    "llamacpp:PATH.gguf" / "llamacpp:smollm2-135m"   in-process llama-cpp-python (optional extra)

The embedded transformers path stays in `workbench.sampling` (it batches on the token level, which
a request/response backend cannot).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from ..errors import ModelSpecError, WorkbenchError


class BackendError(WorkbenchError, RuntimeError):
    """A backend that could not produce a completion: server down, wrong model, malformed response."""


@dataclass
class Completion:
    """One finished request, in the same terms as the embedded engine's rows."""

    key: int                        # the caller's request key (row position)
    text: str                       # the completion text
    n_prompt_tokens: int            # as counted by the backend's tokenizer (usage.prompt_tokens)
    n_completion_tokens: int        # usage.completion_tokens
    finish_reason: str              # "stop" | "length"
    retries: int = 0                # how many failed attempts preceded this one
    top_logprobs: list = field(default_factory=list)  # first token: [(token_text, logprob), ...] when asked


@dataclass
class Request:
    key: int                        # row position, echoed in the Completion
    prompt: str                     # the user text (chat) or the raw text to continue
    chat: bool                      # chat completion (with the template) or plain text completion
    system_prompt: str | None       # None: the server's chat template default
    seed: int                       # per-sample seed (same seed, same text on servers that honour it)
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float = 0.0              # >0: keep tokens with probability >= min_p x the top token's (0: off)
    logprobs: int = 0               # >0: return that many top logprobs for the first token (judging)

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + [{"role": "user", "content": self.prompt}]


class Backend:
    """What generation needs from a backend. Subclasses set `name` (a stable identity: it goes into sample
    ids and run configs, so it never holds a URL or a key), `engine` and `concurrency`."""

    name: str = "backend"
    engine: str = "backend"
    concurrency: int = 1

    def complete(self, request: Request) -> Completion:
        raise NotImplementedError

    def settings(self) -> dict:
        """What is recorded in the run's config (no secrets, no URL: a server may move)."""
        return {"backend": self.engine, "model": self.name}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated price in USD of that many tokens, or None when unknown."""
        return None

    def close(self) -> None:
        pass


def first_token_top_logprobs(logprobs: dict | None, chat: bool) -> list[tuple[str, float]]:
    """The first generated token's top alternatives, [(token, logprob), ...], from an OpenAI-style `logprobs`
    as plain dicts (chat: content[0].top_logprobs; text completion: top_logprobs[0]); [] when absent."""
    if not logprobs:
        return []
    if chat:
        content = logprobs.get("content") or []
        return [(t["token"], float(t["logprob"])) for t in content[0].get("top_logprobs") or []] if content else []
    top = logprobs.get("top_logprobs") or []
    return [(token, float(value)) for token, value in (top[0] or {}).items()] if top else []


BACKEND_PREFIXES = ("openai:", "llamacpp:")


def is_backend_spec(model) -> bool:
    return isinstance(model, Backend) or (isinstance(model, str) and model.startswith(BACKEND_PREFIXES))


def get_backend(model) -> Backend:
    """A Backend from a Backend (returned as is) or a spec string (see the module docstring)."""
    if isinstance(model, Backend):
        return model
    if not is_backend_spec(model):
        raise ModelSpecError(f"{model!r} is not a backend spec.",
                             "Use 'openai:MODEL@URL', 'openai:MODEL' or 'llamacpp:PATH.gguf'.")
    kind, _, rest = model.partition(":")
    rest, _, query = rest.partition("?")
    options = dict(parse_qsl(query, strict_parsing=False)) if query else {}
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        name, at, base_url = rest.rpartition("@") if "@http" in rest else (rest, "", "")
        if not name:
            raise ModelSpecError(f"Backend spec {model!r} names no model.",
                                 "Write it as openai:MODEL@http://HOST:PORT/v1 (the model the server serves).")
        return OpenAIBackend(name, base_url=base_url or None, **_typed(options, OpenAIBackend.OPTION_TYPES, model))
    from .llamacpp import LlamaCppBackend

    return LlamaCppBackend(rest, **_typed(options, LlamaCppBackend.OPTION_TYPES, model))


def _typed(options: dict, types: dict, spec: str) -> dict:
    out = {}
    for key, value in options.items():
        if key not in types:
            raise ModelSpecError(f"Unknown option {key!r} in backend spec {spec!r}.",
                                 f"Known options: {', '.join(sorted(types))}.")
        try:
            out[key] = types[key](value)
        except ValueError as exc:
            raise ModelSpecError(f"Option {key}={value!r} in {spec!r} is not a {types[key].__name__}.",
                                 "Fix the value in the spec.") from exc
    return out


def open_model(spec, dtype: str = "auto"):
    """What a notebook passes around as "the model": a Backend for a backend spec, else a loaded local
    model (`workbench.load_model`). Both work with generate() and the self-judge."""
    if is_backend_spec(spec):
        return get_backend(spec)
    from ..models import LoadedModel, load_model

    return spec if isinstance(spec, LoadedModel) else load_model(spec, dtype=dtype)


__all__ = ["open_model", "Backend", "BackendError", "Completion", "Request", "get_backend", "is_backend_spec"]
