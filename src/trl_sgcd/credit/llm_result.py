"""The outcome of one credit-reference request ([`LLMResult`]) and the failure classes the builder counts and logs.

Pure data and pure functions (no litellm import): the reference builder and its tests use them without a network.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = [
    "ANSWER_BYTES_PER_TOKEN",
    "ERROR_CLASSES",
    "RETRYABLE_CLASSES",
    "LLMResult",
    "cut_to_bytes",
    "describe_error",
    "error_class",
    "failed_result",
]

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


# --- per-build accounting ----------------------------------------------------------------------------------------------
COUNTERS = (
    "groups",
    "requests",
    "attempts",
    "llm",
    "contrast",
    "fallback",
    "none",
    "errors",
    "timeouts",
    "rate_limited",
    "cache_hits",
    "budget_exhausted",
    "prompt_tokens",
    "completion_tokens",
    *(f"errors/{c}" for c in ERROR_CLASSES),
)
STEP_METRICS = (
    "requests",
    "attempts",
    "timeouts",
    "rate_limited",
    "cache_hits",
    "fallbacks",
    "budget_exhausted",
    *(f"errors/{c}" for c in ERROR_CLASSES),
    "build_s",
)
"""What `SiblingReferenceBuilder.step_metrics` logs each step, as `sgcd/reference/<name>` (`fallbacks` = failed
groups; `build_s` = wall seconds of the whole build; timeouts and rate limits count attempts, errors count groups)."""

FIELD_TO_CHECK = {
    "timeout": "credit_reference_deadline",
    "budget_exhausted": "credit_reference_step_budget",
    "connection": "credit_reference_api_base",
    "bad_response": "credit_reference_api_base",
    "server_error": "credit_reference_api_base",
    "auth": "credit_reference_api_key_env",
    "not_found": "credit_reference_model",
    "client_error": "credit_reference_model",
    "malformed": "credit_reference_model",
    "rate_limited": "credit_reference_concurrency",
    "other": "credit_reference_api_base",
}
"""The config field to check first for each failure class (named in the warning)."""


def empty_stats() -> dict:
    """Zeroed counters of one build (or of a whole run)."""
    return {**dict.fromkeys(COUNTERS, 0), "latency_s": 0.0, "cost_usd": 0.0, "build_s": 0.0}


def account(result: LLMResult, stats: dict) -> None:
    """Add one request's outcome to `stats` (the failed group itself is counted by the caller)."""
    if result.cached:
        stats["cache_hits"] += 1
    else:
        stats["requests"] += int(result.attempts > 0)
        stats["attempts"] += result.attempts
        stats["timeouts"] += max(result.attempt_errors.count("timeout"), int(result.timed_out))
        stats["rate_limited"] += result.attempt_errors.count("rate_limited")
        stats["budget_exhausted"] += int(result.budget_exhausted)
        if result.error is None and (result.cost_usd is None or stats["cost_usd"] is None):
            stats["cost_usd"] = None  # an answer of unknown price: the total is unknown, never under-reported
        elif stats["cost_usd"] is not None:
            stats["cost_usd"] += result.cost_usd or 0.0
    stats["latency_s"] += result.latency_s
    stats["prompt_tokens"] += result.prompt_tokens or 0
    stats["completion_tokens"] += result.completion_tokens or 0


def accumulate(total: dict, stats: dict) -> None:
    """Add the counters of one build to the run's `total` (a cost stays `None` once unknown)."""
    for key, value in stats.items():
        if key == "cost_usd":
            known = value is not None and total.get("cost_usd") is not None
            total["cost_usd"] = total["cost_usd"] + value if known else None
        else:
            total[key] = total.get(key, 0) + value


def step_metrics(stats: dict) -> dict[str, float]:
    """`sgcd/reference/<name>` -> value for every name of `STEP_METRICS`, from the counters of one build."""
    values = {**stats, "fallbacks": stats["errors"]}
    return {f"sgcd/reference/{name}": float(values.get(name, 0)) for name in STEP_METRICS}


def merge_step_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Step metrics of all ranks in one dict: counts add up, `build_s` is the slowest rank's."""
    merged: dict[str, float] = {}
    for metrics in per_rank:
        for name, value in metrics.items():
            merged[name] = (
                max(merged.get(name, 0.0), value) if name.endswith("build_s") else merged.get(name, 0) + value
            )
    return merged


def failure_warning(stats: dict, last_error: str | None, *, endpoint: str, model: str | None, fallback: str) -> str:
    """One line for the log: what failed this step, the last error, the endpoint, and the config field to check."""
    classes = {c: stats[f"errors/{c}"] for c in ERROR_CLASSES if stats[f"errors/{c}"]}
    worst = max(classes, key=classes.get) if classes else "other"
    what = ", ".join(f"{c}: {n}" for c, n in classes.items())
    asked = stats["errors"] + stats["llm"]
    return (
        f"Credit reference LLM: {stats['errors']} of {asked} group(s) failed this step ({what}; "
        f"{stats['attempts']} attempt(s), {stats['build_s']:.1f} s) and got fallback={fallback!r}. "
        f"Last error: {last_error}. Endpoint: {endpoint} (model {model!r}). Check {FIELD_TO_CHECK[worst]}."
    )
