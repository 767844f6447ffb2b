"""Any OpenAI-compatible server (vLLM, TGI, llama.cpp's server, a hosted API) through the official client.

One request per sample, each with its own seed (servers that honour `seed` then give the same text
for the same sample id, across restarts too); `concurrency` requests in flight; retries with
exponential backoff and full jitter on 429, 5xx, timeouts and dropped connections; an optional
requests-per-minute limit; token usage from the responses; a cost estimate from a price table.

The API key is read from an environment variable (`api_key_env`, default OPENAI_API_KEY) when the
backend is built and lives only inside the client: it is never part of `name`, `settings()`, a
ledger line, an error message or a repr, so it cannot reach a run folder, a notebook or a report.
"""
from __future__ import annotations

import os
import random
import threading
import time

from . import Backend, BackendError, Completion, Request, first_token_top_logprobs

# USD per 1M (input, output) tokens, for the ledger's cost estimate. Hosted prices change: extend or
# override with OpenAIBackend(prices={...}); self-hosted servers are costed per GPU hour by the loop.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}

LOCAL_KEY = "not-needed"  # local servers (llama.cpp, vLLM without --api-key) accept any key
NOT_AN_OPENAI_SERVER = ("Check that base_url points at the /v1 root of an OpenAI-compatible server (not a web page "
                        "or a proxy's error page).")


def flag(text: str) -> bool:
    """A yes/no option in a spec's query string."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


class _RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart, across threads."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


class OpenAIBackend(Backend):
    """An OpenAI-compatible endpoint. Parameters are stored as given; the client is built on first use."""

    engine = "openai"
    OPTION_TYPES = {"concurrency": int, "rpm": float, "timeout": float, "max_retries": int, "api_key_env": str,
                    "top_k": flag, "check_model": flag}

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, rpm: float | None = None, timeout: float = 120.0, max_retries: int = 6,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, top_k: bool = True,
                 prices: dict[str, tuple[float, float]] | None = None, check_model: bool = True):
        self.model = model                      # the model name the server serves
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")  # None: the client's default (api.openai.com)
        self.api_key_env = api_key_env          # the environment variable holding the key (never the key)
        self.concurrency = concurrency          # requests in flight
        self.rpm = rpm                          # requests per minute cap (None: no cap)
        self.timeout = timeout                  # seconds per request
        self.max_retries = max_retries          # retries on 429 / 5xx / timeout / connection errors
        self.backoff_base = backoff_base        # first retry waits up to this many seconds (full jitter)
        self.backoff_max = backoff_max          # cap on one wait
        self.top_k = top_k                      # send top_k (vLLM, TGI, llama.cpp accept it; hosted OpenAI rejects it)
        self.prices = {**PRICES, **(prices or {})}
        self.check_model = check_model          # ask /v1/models once whether the server serves `model`
        if concurrency < 1:
            raise BackendError(f"concurrency must be >= 1, got {concurrency}.", "Use 1 or more requests in flight.")
        self.name = f"openai:{model}"
        self._client = None
        self._limiter = _RateLimiter(rpm)
        self._lock = threading.Lock()
        self._checked = False

    def __getstate__(self) -> dict:  # to Ray workers: settings only; each process builds its own client
        state = dict(self.__dict__)
        state.update(_client=None, _lock=None, _limiter=None, _checked=False)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._limiter = threading.Lock(), _RateLimiter(self.rpm)

    def __repr__(self) -> str:  # no key, by construction
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    @property
    def where(self) -> str:
        return self.base_url or "the OpenAI API"

    # ------------------------------------------------------------------ client
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as exc:
                    raise BackendError("The openai backend needs the `openai` package (a core dependency).",
                                       "pip install openai, or reinstall the workbench: pip install -e .") from exc
                key = os.environ.get(self.api_key_env)
                if not key and not self.base_url:
                    raise BackendError(f"No API key: ${self.api_key_env} is not set.",
                                       f"export {self.api_key_env}=... (keys are read from the environment only), "
                                       "or point base_url at a local server.")
                # the client's own retries are off: ours add jitter, count retries and honour Retry-After
                self._client = openai.OpenAI(base_url=self.base_url, api_key=key or LOCAL_KEY, max_retries=0,
                                             timeout=self.timeout)
        if self.check_model and not self._checked:
            self._check_served_model()
        return self._client

    def _check_served_model(self) -> None:
        import openai

        self._checked = True
        try:
            served = [m.id for m in self._client.models.list()]
        except openai.APIConnectionError as exc:
            raise BackendError(f"Cannot reach an OpenAI-compatible server at {self.where} ({type(exc).__name__}).",
                               "Start the server (see README 'Scaling out') or fix the URL in the model spec.") from exc
        except Exception:  # noqa: BLE001 - some servers have no /models; the first request will tell
            return
        if served and self.model not in served:
            raise BackendError(f"The server at {self.where} does not serve model {self.model!r}; it serves "
                               f"{served[:10]}.", f"Use one of those names: openai:{served[0]}@{self.where}.")

    # ------------------------------------------------------------------ requests
    def complete(self, request: Request) -> Completion:
        kwargs = dict(model=self.model, max_tokens=request.max_tokens, temperature=request.temperature,
                      top_p=request.top_p, seed=request.seed % (2 ** 31))
        extra_body = {}
        if self.top_k and request.top_k > 0:
            extra_body["top_k"] = request.top_k
        if request.min_p > 0:  # not an OpenAI parameter: vLLM, TGI and llama.cpp's server read it from the body
            extra_body["min_p"] = request.min_p
        if extra_body:
            kwargs["extra_body"] = extra_body
        if request.chat:
            kwargs["messages"] = request.messages()
            if request.logprobs:
                kwargs.update(logprobs=True, top_logprobs=request.logprobs)
            response, retries = self._call(self.client.chat.completions.create, kwargs)
        else:
            kwargs["prompt"] = request.prompt
            if request.logprobs:
                kwargs["logprobs"] = request.logprobs
            response, retries = self._call(self.client.completions.create, kwargs)
        return self._parse(response, request, retries)

    def _call(self, create, kwargs):
        import openai

        attempt = 0
        while True:
            self._limiter.wait()
            try:
                return create(**kwargs), attempt
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                # APITimeoutError is an APIConnectionError; 5xx covers 502/503/504 from load balancers
                attempt += 1
                if attempt > self.max_retries:
                    status = getattr(exc, "status_code", None)
                    raise BackendError(
                        f"{self.where} failed {attempt} times in a row for model {self.model!r} "
                        f"({type(exc).__name__}{f', HTTP {status}' if status else ''}).",
                        "Check that the server is up (rerun the same command to continue: finished samples "
                        "are kept), or raise max_retries / lower concurrency or rpm.") from None
                time.sleep(self._backoff(attempt, exc))
            except openai.APIStatusError as exc:
                raise BackendError(f"{self.where} refused the request for model {self.model!r}: HTTP "
                                   f"{exc.status_code}: {_short(exc.message)}",
                                   _status_fix(exc.status_code, self)) from None
            except openai.APIResponseValidationError as exc:
                raise BackendError(f"{self.where} sent a response that is not an OpenAI completion: "
                                   f"{_short(str(exc))}", NOT_AN_OPENAI_SERVER) from None
            except ValueError as exc:  # a body that is not JSON
                raise BackendError(f"{self.where} sent a response that is not JSON ({_short(str(exc))}).",
                                   NOT_AN_OPENAI_SERVER) from None

    def _backoff(self, attempt: int, exc) -> float:
        wait = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            return max(wait, min(float(retry_after), self.backoff_max)) if retry_after else wait
        except ValueError:
            return wait

    def _parse(self, response, request: Request, retries: int) -> Completion:
        if isinstance(response, (str, bytes)) or not hasattr(response, "choices"):
            # the client hands back a non-JSON body (an HTML error page, a proxy's text) as is
            raise BackendError(f"{self.where} sent a response that is not JSON, not an OpenAI completion: "
                               f"{_short(str(response))}", NOT_AN_OPENAI_SERVER)
        choices = getattr(response, "choices", None)
        if not choices:
            raise BackendError(f"{self.where} returned a completion without choices for model {self.model!r}: "
                               f"{_short(repr(response))}", "Check the server's logs; the request was: "
                               f"{'chat' if request.chat else 'text'} completion, max_tokens={request.max_tokens}.")
        choice = choices[0]
        text = choice.message.content if request.chat and getattr(choice, "message", None) else getattr(choice, "text", None)
        if not isinstance(text, str):
            raise BackendError(f"{self.where} returned a choice without text for model {self.model!r}: "
                               f"{_short(repr(choice))}", "Check the server's logs (a tool call or a refusal?).")
        usage = getattr(response, "usage", None)
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Completion(request.key, text, int(getattr(usage, "prompt_tokens", 0) or 0),
                          int(getattr(usage, "completion_tokens", 0) or 0), finish, retries,
                          first_token_top_logprobs(_plain(getattr(choice, "logprobs", None)), request.chat))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.prices.get(self.model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def _plain(value):
    """The client's response models as plain dicts (what llama-cpp-python returns in-process)."""
    return value.model_dump() if hasattr(value, "model_dump") else value


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _status_fix(status: int, backend: OpenAIBackend) -> str:
    if status in (401, 403):
        return f"Set a valid key in ${backend.api_key_env} (the workbench reads keys from the environment only)."
    if status == 404:
        return (f"Check the model name ({backend.model!r}) against the server's /v1/models, and that base_url "
                "ends in /v1.")
    return ("Check the sampling settings (e.g. max_tokens within the model's context; top_k=false and min_p=0 for "
            "hosted APIs).")
