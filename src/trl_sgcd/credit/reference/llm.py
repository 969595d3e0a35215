"""Batched litellm client for credit references: hard deadline, retries with backoff, bounded concurrency, disk cache.

litellm's own `timeout` is not always honoured (a run once hung 6.5 h), so every attempt is wrapped in
`asyncio.wait_for(..., timeout=deadline)`. Retries are ours (`num_retries=0` is passed to litellm, and the OpenAI SDK's
own retries are off): rate limits (429), server errors (5xx), timeouts and connection errors back off exponentially
with jitter; other 4xx answers fail at once. A whole batch also gets a wall budget (`complete_many(..., budget=s)`):
every attempt's deadline, every backoff and every request still waiting for a slot is cut to what is left of it, so a
hung provider costs a step at most the budget, retries and waves included. The client never raises: a failure is an
[`LLMResult`] with `error` and `error_class` set, and the caller falls back for that request only. Answers longer than
`ANSWER_BYTES_PER_TOKEN * max_tokens` bytes are cut on arrival, before anything tokenizes or sanitizes them.

litellm is imported lazily, with `LITELLM_LOCAL_MODEL_COST_MAP=True` unless the user set it, so importing this module
never touches the network. [`~LiteLLMClient.warm`] imports it and runs one mock completion (no request is sent), so
the first step's deadline measures the request, not the import (4-17 s on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ANSWER_BYTES_PER_TOKEN",
    "ERROR_CLASSES",
    "RETRYABLE_CLASSES",
    "DiskCache",
    "LLMResult",
    "LiteLLMClient",
    "cut_to_bytes",
    "describe_error",
    "error_class",
    "failed_result",
    "import_litellm",
    "route_model",
]


# --- results and failure classes (pure data, no litellm import) ----------------------------------------------------
ANSWER_BYTES_PER_TOKEN = 32
"""An answer is cut to this many UTF-8 bytes per completion token allowed (`max_tokens`) as soon as it arrives."""

ERROR_CLASSES = (
    "timeout",
    "rate_limited",
    "server_error",
    "connection",
    "bad_response",
    "auth",
    "not_found",
    "client_error",
    "budget_exhausted",
    "malformed",
    "other",
)
"""Failure classes of a credit-reference request (`malformed`: an answer that is not a five-section reference)."""

RETRYABLE_CLASSES = frozenset({"timeout", "rate_limited", "server_error", "connection", "bad_response"})
_RETRYABLE_NAMES = (
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "APIConnectionError",
    "Timeout",
    "APITimeoutError",
    "BadGatewayError",
)


@dataclass
class LLMResult:
    """
    Outcome of one chat completion request.

    Args:
        text (`str` or `None`):
            Assistant content; `None` when the request failed.
        error (`str` or `None`):
            Why it failed (`"timeout: ..."`, `"RateLimitError: ..."`); `None` on success.
        latency_s (`float`):
            Wall time of the request, retries and backoff included.
        prompt_tokens (`int` or `None`):
            Prompt tokens reported by the server (`None` when unknown; 0 on a cache hit).
        completion_tokens (`int` or `None`):
            Completion tokens reported by the server.
        cost_usd (`float` or `None`):
            Cost from litellm's price map; `None` when the model's price is unknown (never a made-up 0).
        cached (`bool`):
            Whether the answer came from the disk cache (no request was made).
        attempts (`int`):
            Number of HTTP attempts made.
        timed_out (`bool`, *optional*, defaults to `False`):
            Whether the last attempt hit the deadline.
        error_class (`str` or `None`, *optional*):
            Class of the failure, one of `ERROR_CLASSES` (`None` on success).
        attempt_errors (`tuple[str, ...]`, *optional*):
            Class of every failed attempt, in order (timeouts and rate limits are counted from it).
        budget_exhausted (`bool`, *optional*, defaults to `False`):
            Whether the batch's wall budget cut this request short (an attempt, a retry, or the request itself).
    """

    text: str | None
    error: str | None
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    cached: bool
    attempts: int
    timed_out: bool = False
    error_class: str | None = None
    attempt_errors: tuple[str, ...] = ()
    budget_exhausted: bool = False


def failed_result(error: str, error_class: str, *, attempts: int = 0, **fields) -> LLMResult:
    """An [`LLMResult`] for a request that got no answer."""
    return LLMResult(
        None, error, 0.0, None, None, None, cached=False, attempts=attempts, error_class=error_class, **fields
    )


def cut_to_bytes(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` that is at most `max_bytes` UTF-8 bytes (never splits a character)."""
    if len(text) * 4 <= max_bytes:  # no character is longer than 4 bytes
        return text
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", errors="ignore")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def error_class(exc: BaseException) -> str:
    """
    The failure class (one of `ERROR_CLASSES`) of an exception raised by a litellm call.

    litellm reports a refused connection, a dropped socket and a body that is not JSON all as `InternalServerError`
    (status 500), so the message and the exception chain are read too.
    """
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__:
        return "timeout"
    names = {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}
    text = str(exc).lower()
    if names & {"APIConnectionError", "ConnectError", "ConnectionError", "RemoteProtocolError", "ReadError"}:
        return "connection"
    if "connection error" in text or "connection refused" in text:
        return "connection"
    if "invalid response" in text or names & {"JSONDecodeError"}:
        return "bad_response"
    status = getattr(exc, "status_code", None)
    by_status = {429: "rate_limited", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout"}
    if isinstance(status, int):
        return by_status.get(status, "server_error" if status >= 500 else "client_error")
    if names & {"RateLimitError"}:
        return "rate_limited"
    if names & {"AuthenticationError", "PermissionDeniedError"}:
        return "auth"
    return "server_error" if names & set(_RETRYABLE_NAMES) else "other"


def describe_error(exc: BaseException) -> str:
    """`Class: message` of an exception, on one line, at most 300 characters of message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# --- disk cache of answers: one JSON file per (model, evidence digest), written atomically ---------------------------
class DiskCache:
    """JSON files keyed by `sha256(model + "\\n" + key)`; writes are atomic (temp file + `os.replace`)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    def _path(self, model: str, key: str) -> Path:
        digest = hashlib.sha256(f"{model}\n{key}".encode()).hexdigest()
        return self.directory / f"{digest}.json"

    def get(self, model: str, key: str) -> dict | None:
        if self.directory is None:
            return None
        try:
            record = json.loads(self._path(model, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("model") == model and record.get("key") == key else None

    def put(self, model: str, key: str, record: dict) -> None:
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"model": model, "key": key, **record}, f)
            os.replace(tmp, self._path(model, key))
        except OSError:  # a read-only or full disk must not stop training
            pass


# --- the client -------------------------------------------------------------------------------------------------------


def import_litellm():
    """Import litellm lazily, without fetching its remote price map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def route_model(model: str, api_base: str | None) -> str:
    """With an `api_base`, a bare model name goes through litellm's OpenAI-compatible route (`openai/<name>`)."""
    if api_base and "/" not in model:
        return f"openai/{model}"
    return model


BUDGET_GRACE_S = 0.5
"""Slack of the outer safety net over a batch's budget (the requests themselves stop at the budget)."""

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide event loop of `complete_many`, started lazily in a daemon thread (a cached resource)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="trl-sgcd-litellm", daemon=True).start()
            _LOOP = loop
        return _LOOP


@dataclass
class _Pending:
    """A request in flight: its attempts so far, then its result (read by the caller if it stops waiting)."""

    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    result: LLMResult | None = None


def _fill_unfinished(pending: list[_Pending], error: str = "step budget spent before an answer") -> list[LLMResult]:
    """The results of `pending`, with a `budget_exhausted` failure (its attempts counted) for each unfinished one."""
    return [
        p.result
        if p.result is not None
        else failed_result(
            error, "budget_exhausted", attempts=p.attempts, attempt_errors=tuple(p.errors), budget_exhausted=True
        )
        for p in pending
    ]


class LiteLLMClient:
    """
    Concurrent chat completions through litellm, for batches of credit-reference requests.

    Args:
        model (`str`):
            litellm model name (`"openai/gpt-4o-mini"`, `"hosted_vllm/Qwen3-32B"`); with `api_base`, a bare name is
            routed as `"openai/<name>"`.
        api_base (`str` or `None`, *optional*):
            Base URL of an OpenAI-compatible server.
        api_key (`str` or `None`, *optional*):
            API key; with `api_base` and no key, a placeholder is sent (local servers ignore it).
        deadline (`float`, *optional*, defaults to `60.0`):
            Hard per-attempt deadline in seconds (`asyncio.wait_for`).
        retries (`int`, *optional*, defaults to `3`):
            Extra attempts after a retryable failure (429, 5xx, timeout, connection error).
        concurrency (`int`, *optional*, defaults to `8`):
            Requests in flight at once.
        max_tokens (`int`, *optional*, defaults to `512`):
            Completion token cap.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature.
        cache_dir (`str` or `None`, *optional*):
            Directory of the JSON answer cache; `None` disables it.
        backoff_base (`float`, *optional*, defaults to `0.5`):
            First backoff delay in seconds (doubles per retry, with jitter).
        backoff_max (`float`, *optional*, defaults to `8.0`):
            Longest backoff delay.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        deadline: float = 60.0,
        retries: int = 3,
        concurrency: int = 8,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache_dir: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
    ):
        if deadline <= 0 or retries < 0 or concurrency < 1:
            raise ValueError(
                f"Need deadline > 0, retries >= 0, concurrency >= 1; got {deadline}, {retries}, {concurrency}."
            )
        self.model = route_model(model, api_base)
        self.api_base = api_base
        self.api_key = api_key if api_key is not None else ("EMPTY" if api_base else None)
        self.deadline = float(deadline)
        self.retries = int(retries)
        self.concurrency = int(concurrency)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.cache = DiskCache(cache_dir)
        self._rng = random.Random()
        self._warm = False

    @property
    def endpoint(self) -> str:
        """Where requests go: `api_base`, or litellm's default endpoint for the model's provider."""
        return self.api_base or f"litellm's default endpoint for {self.model!r}"

    # public API
    def warm(self, timeout: float = 30.0) -> None:
        """
        Import litellm and run one mock completion on the background loop (no request is sent), once per client.

        The first real call then pays neither the import nor litellm's lazy set-up inside its deadline. Never raises.
        """
        if self._warm:
            return
        self._warm = True
        litellm = import_litellm()
        kwargs = {k: v for k, v in (("api_base", self.api_base), ("api_key", self.api_key)) if v}
        coroutine = litellm.acompletion(
            model=self.model, messages=[{"role": "user", "content": "warm-up"}], mock_response="ok", **kwargs
        )
        future = asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
        try:
            future.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - warming is an optimisation only
            future.cancel()

    async def acomplete_many(
        self, requests: Sequence[tuple[str, list[dict]]], *, budget: float | None = None
    ) -> list[LLMResult]:
        """
        Run all requests concurrently (at most `concurrency` in flight) and return one result per request, in order.

        Args:
            requests (`Sequence[tuple[str, list[dict]]]`):
                `(cache_key, messages)` pairs; the cache key should hash the sanitized evidence.
            budget (`float` or `None`, *optional*):
                Wall seconds for the whole batch, retries, backoff and waves included; `None`: per-attempt deadlines
                only.

        Returns:
            `list[LLMResult]`: never raises; failures carry `error`.
        """
        return await self._run_all(requests, budget, [_Pending() for _ in requests])

    async def _run_all(self, requests, budget: float | None, pending: list[_Pending]) -> list[LLMResult]:
        """Each result lands in `pending` as soon as it is ready (a caller that stops waiting keeps the finished ones)."""
        semaphore = asyncio.Semaphore(self.concurrency)
        stop_at = None if budget is None else time.monotonic() + budget

        async def run(i: int, key: str, messages: list[dict]) -> None:
            record = self.cache.get(self.model, key)
            if record is not None:
                pending[i].result = LLMResult(record["text"], None, 0.0, 0, 0, 0.0, cached=True, attempts=0)
                return
            async with semaphore:
                pending[i].result = await self._complete_one(key, messages, stop_at, pending[i])

        tasks = [asyncio.ensure_future(run(i, key, messages)) for i, (key, messages) in enumerate(requests)]
        if stop_at is None:
            await asyncio.gather(*tasks)
        else:  # the budget holds even where a cancelled attempt is slow to unwind
            _, late = await asyncio.wait(tasks, timeout=max(stop_at - time.monotonic(), 0.0) + 0.05)
            for task in late:
                task.cancel()
        return _fill_unfinished(pending)

    def complete_many(
        self, requests: Sequence[tuple[str, list[dict]]], *, budget: float | None = None
    ) -> list[LLMResult]:
        """
        Synchronous [`~LiteLLMClient.acomplete_many`]. Safe to call from a thread whose event loop is running: the
        coroutine always runs on one background event loop (a daemon thread), kept for the whole process because
        litellm binds its connection pools and logging worker to the loop that first used them. The budget's clock
        starts after litellm is imported.
        """
        if not requests:
            return []
        self.warm()
        loop = _background_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # called from a coroutine on our own loop: a fresh loop in a worker thread, no deadlock
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(asyncio.run, self.acomplete_many(requests, budget=budget)).result()
        pending = [_Pending() for _ in requests]
        future = asyncio.run_coroutine_threadsafe(self._run_all(requests, budget, pending), loop)
        bound = self._batch_bound(len(requests)) if budget is None else budget + BUDGET_GRACE_S
        try:
            return future.result(timeout=bound)
        except Exception as exc:  # noqa: BLE001 - a safety net; each request already has its own deadline
            future.cancel()
            return _fill_unfinished(pending, f"batch stopped: {describe_error(exc)}")

    def _batch_bound(self, num_requests: int) -> float:
        waves = math.ceil(num_requests / self.concurrency)
        return waves * (self.retries + 1) * (self.deadline + self.backoff_max) + 30.0

    # internals
    def _backoff(self, attempt: int, exc: BaseException | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        retry_after = getattr(getattr(exc, "response", None), "headers", {}) or {}
        try:
            delay = max(delay * 0.5, min(self.backoff_max, float(retry_after.get("retry-after"))))
        except (TypeError, ValueError):
            pass
        return delay * 0.5 + self._rng.uniform(0.0, delay * 0.5)

    async def _complete_one(
        self, key: str, messages: list[dict], stop_at: float | None, pending: _Pending
    ) -> LLMResult:
        start = time.perf_counter()
        attempt, last_exc, classes, cut = 0, None, [], False
        cause_exc = None  # the last non-timeout failure: what spent the budget when a cut attempt then times out
        while True:
            left = math.inf if stop_at is None else stop_at - time.monotonic()
            if left <= 0:
                cut = True
                break
            timeout = min(self.deadline, left)
            attempt += 1
            pending.attempts = attempt
            try:
                response = await asyncio.wait_for(self._acompletion(messages, timeout), timeout=timeout)
                return self._success(key, response, start, attempt, tuple(classes))
            except Exception as exc:  # noqa: BLE001 - the client must never raise
                last_exc = exc
                classes.append(error_class(exc))
                if classes[-1] != "timeout":
                    cause_exc = exc
                pending.errors = list(classes)
                cut = classes[-1] == "timeout" and timeout < self.deadline
                if classes[-1] not in RETRYABLE_CLASSES or attempt > self.retries or cut:
                    break
                delay = self._backoff(attempt - 1, exc)
                if stop_at is not None and time.monotonic() + delay >= stop_at:
                    cut = True
                    break
                await asyncio.sleep(delay)
        latency = time.perf_counter() - start
        if last_exc is None:
            return failed_result(
                "budget exhausted before the request was sent", "budget_exhausted", budget_exhausted=True
            )
        timed_out, final_class = classes[-1] == "timeout", classes[-1]
        if timed_out and cut and cause_exc is not None:
            # a retry sent with the budget's last moments timed out: report what made the retries (e.g. rate limits)
            final_class = error_class(cause_exc)
            error = describe_error(cause_exc) + f" (then the step budget ran out after {attempt} attempt(s))"
        elif timed_out:
            error = f"timeout: no answer within {timeout:g} s" + (" (step budget)" if cut else "")
        else:
            error = describe_error(last_exc)
        if final_class == "connection":
            error += f" [endpoint {self.endpoint}]"
        return LLMResult(
            None,
            error,
            latency,
            None,
            None,
            None,
            cached=False,
            attempts=attempt,
            timed_out=final_class == "timeout",
            error_class=final_class,
            attempt_errors=tuple(classes),
            budget_exhausted=cut,
        )

    async def _acompletion(self, messages: list[dict], timeout: float):
        litellm = import_litellm()
        kwargs = {}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        return await litellm.acompletion(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            timeout=timeout,
            num_retries=0,
            max_retries=0,
            **kwargs,
        )

    def _success(self, key: str, response, start: float, attempts: int, classes: tuple[str, ...]) -> LLMResult:
        choice = response.choices[0] if getattr(response, "choices", None) else None
        text = getattr(getattr(choice, "message", None), "content", None) or ""
        text = cut_to_bytes(text, ANSWER_BYTES_PER_TOKEN * self.max_tokens)
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        cost = self._cost(response)
        latency = time.perf_counter() - start
        if text.strip():
            record = {
                "text": text,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost,
                "latency_s": latency,
            }
            self.cache.put(self.model, key, record)
        return LLMResult(
            text,
            None,
            latency,
            prompt_tokens,
            completion_tokens,
            cost,
            cached=False,
            attempts=attempts,
            attempt_errors=classes,
        )

    def _cost(self, response) -> float | None:
        hidden = getattr(response, "_hidden_params", None) or {}
        if "response_cost" in hidden:  # litellm already priced it (None when the model's price is unknown)
            cost = hidden["response_cost"]
            return float(cost) if cost is not None else None
        litellm = import_litellm()
        try:
            cost = litellm.completion_cost(completion_response=response, model=self.model)
        except Exception:  # noqa: BLE001 - unknown price: report None, never a made-up 0
            return None
        return float(cost) if cost is not None else None
