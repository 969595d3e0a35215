"""`SiblingReferenceBuilder`: sanitized sibling evidence -> credit reference, one per mixed group.

Two backends write the same five sections (see `prompt.SECTION_TITLES`):

- `"contrast"` (offline default, no model): the deterministic contrast of the sanitized traces (`contrast.py`).
- `"litellm"`: an external LLM (paper, Table 5), called once per batch through [`~trl_sgcd.credit.reference.llm.LiteLLMClient`]. A
  malformed or empty answer, an error, a deadline or the step budget falls back per group (`fallback="contrast"` or
  `"none"`), and the failure is counted by class. `build` never raises because of the LLM: training must not stop.

The whole build of a step has a wall budget (`step_budget`): the LLM batch gets what evidence building left of it,
retries and waves included. The client is warmed (litellm imported) when the builder is made, so no step pays for it.
The reference text is capped at `max_reference_tokens` by [`cap_reference`]; the task prompt is never truncated.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence

from trl_sgcd.credit.reference.contrast import contrast_sections
from trl_sgcd.credit.reference.evidence import (
    approx_token_count,
    build_evidence,
    render_sanitized_trace,
    visible_tool_names,
)
from trl_sgcd.credit.reference.llm import (
    ANSWER_BYTES_PER_TOKEN,
    ERROR_CLASSES,
    LiteLLMClient,
    LLMResult,
    cut_to_bytes,
    failed_result,
)
from trl_sgcd.credit.reference.prompt import (
    PROMPT_VERSION,
    SECTION_TITLES,
    format_reference,
    parse_reference_sections,
    render_reference_messages,
    split_sections,
)
from trl_sgcd.credit.reference.sanitize import PLACEHOLDER_RE, Sanitizer, private_values
from trl_sgcd.credit.types import CreditReference, Evidence, SiblingGroup

logger = logging.getLogger(__name__)

__all__ = ["CreditReference", "SiblingReferenceBuilder", "cap_reference", "check_api_key", "uses_reference_llm"]

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


BACKENDS = ("contrast", "litellm")
FALLBACKS = ("contrast", "none")
SOURCES = ("llm", "contrast", "fallback", "none")
_QUOTED_LITERAL_RE = re.compile(r"`([^`\n]{3,80})`|\"([^\"\n]{3,80})\"")


def cap_reference(text: str, tokenizer, max_tokens: int) -> str:
    """
    Cap a reference at `max_tokens` tokens: the one capping rule, applied once, where a reference is made (the
    builder, the sibling contexts); the teacher prompt uses the text as it is.

    The text is first cut to `ANSWER_BYTES_PER_TOKEN * max_tokens` UTF-8 bytes, so a huge text is never tokenized
    whole; then it keeps its first `max_tokens` tokens of `tokenizer` (without one: ~4 characters per token).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1.")
    text = cut_to_bytes(text, ANSWER_BYTES_PER_TOKEN * max_tokens)
    if tokenizer is None:
        return text if approx_token_count(text) <= max_tokens else text[: 4 * max_tokens]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def uses_reference_llm(args) -> bool:
    """Whether a config's run calls the reference LLM (litellm backend, and a mode that builds references)."""
    from trl_sgcd.credit.modes import credit_mode

    return args.credit_reference_backend == "litellm" and credit_mode(args.credit_mode).uses_reference_builder


def check_api_key(key_env: str | None) -> str | None:
    """The API key held by `$key_env` (`None` when `key_env` is `None`: a server that needs no key); unset: ValueError."""
    if not key_env:
        return None
    key = os.environ.get(key_env)
    if not key:
        raise ValueError(
            f"credit_reference_api_key_env={key_env!r} but ${key_env} is not set: export it, or set "
            "credit_reference_api_key_env=None for a local server that needs no key."
        )
    return key


class SiblingReferenceBuilder:
    """
    Build one [`CreditReference`] per sibling group, from sanitized evidence, with the contrast or the litellm backend.

    Args:
        backend (`str`, *optional*, defaults to `"contrast"`): `"contrast"` or `"litellm"`.
        model (`str` or `None`, *optional*): litellm model name (required for `"litellm"` unless `llm_client` is given).
        api_base (`str` or `None`, *optional*): base URL of an OpenAI-compatible server.
        api_key (`str` or `None`, *optional*): API key.
        deadline (`float`, *optional*, defaults to `60.0`): hard per-attempt deadline in seconds.
        retries (`int`, *optional*, defaults to `3`): retries on 429, 5xx and timeouts.
        concurrency (`int`, *optional*, defaults to `8`): LLM calls in flight at once.
        step_budget (`float` or `None`, *optional*, defaults to `60.0`): wall seconds for one whole `build` (evidence,
            every request, retry, backoff and wave); `None`: per-attempt deadlines only.
        max_input_tokens (`int`, *optional*, defaults to `12000`): token budget of the evidence.
        max_reference_tokens (`int`, *optional*, defaults to `512`): cap on the reference (LLM output and text).
        cache_dir (`str` or `None`, *optional*): disk cache of LLM answers.
        fallback (`str`, *optional*, defaults to `"contrast"`): what a group gets when the LLM fails.
        observation_max_chars (`int`, *optional*, defaults to `512`): tool observation cap in the evidence.
        private_columns (`Sequence[str]`, *optional*): row columns whose values are masked as `[PRIVATE]`.
        tokenizer (*optional*): the policy tokenizer, for token budgets and the cap (default: ~4 chars per token).
        llm_client (*optional*): object with `complete_many(requests, budget=None) -> list[LLMResult]` (or such a
            callable), used instead of building a [`~trl_sgcd.credit.reference.llm.LiteLLMClient`].
        warm (`bool`, *optional*, defaults to `True`): warm the LLM client now (import litellm), not on the first step.
    """

    def __init__(
        self,
        backend: str = "contrast",
        *,
        model: str | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        deadline: float = 60.0,
        retries: int = 3,
        concurrency: int = 8,
        step_budget: float | None = 60.0,
        max_input_tokens: int = 12000,
        max_reference_tokens: int = 512,
        cache_dir: str | None = None,
        fallback: str = "contrast",
        observation_max_chars: int = 512,
        private_columns: Sequence[str] = (),
        tokenizer=None,
        llm_client=None,
        warm: bool = True,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; choose one of {list(BACKENDS)}.")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback={fallback!r} is not supported; choose one of {list(FALLBACKS)}.")
        if step_budget is not None and step_budget <= 0:
            raise ValueError(f"step_budget={step_budget} must be > 0 seconds (credit_reference_step_budget).")
        if backend == "litellm" and llm_client is None:
            if not model:
                raise ValueError("backend='litellm' needs a model (credit_reference_model).")
            llm_client = LiteLLMClient(
                model,
                api_base=api_base,
                api_key=api_key,
                deadline=deadline,
                retries=retries,
                concurrency=concurrency,
                max_tokens=max_reference_tokens,
                cache_dir=cache_dir,
            )
        self.backend = backend
        self.fallback = fallback
        self.step_budget = step_budget
        self.max_input_tokens = max_input_tokens
        self.max_reference_tokens = max_reference_tokens
        self.observation_max_chars = observation_max_chars
        self.private_columns = tuple(private_columns)
        self.tokenizer = tokenizer
        self.count_tokens = _token_counter(tokenizer)
        self.llm_client = llm_client
        self.stats = empty_stats()
        self.last_build_stats = empty_stats()
        if backend == "litellm" and warm and hasattr(llm_client, "warm"):
            llm_client.warm()

    @classmethod
    def from_config(cls, args, tokenizer=None) -> SiblingReferenceBuilder:
        """Build from an [`SGCDConfig`] (`credit_*` fields); the API key is read from `credit_reference_api_key_env`."""
        uses_llm = uses_reference_llm(args)
        return cls(
            args.credit_reference_backend,
            model=args.credit_reference_model,
            api_base=args.credit_reference_api_base,
            api_key=check_api_key(args.credit_reference_api_key_env) if uses_llm else None,
            deadline=args.credit_reference_deadline,
            retries=args.credit_reference_retries,
            concurrency=args.credit_reference_concurrency,
            step_budget=args.credit_reference_step_budget,
            max_input_tokens=args.credit_reference_max_input_tokens,
            max_reference_tokens=args.credit_reference_max_tokens,
            cache_dir=args.credit_reference_cache_dir,
            fallback=args.credit_reference_fallback,
            observation_max_chars=args.credit_observation_max_chars,
            private_columns=args.credit_private_columns,
            tokenizer=tokenizer,
            warm=uses_llm,
        )

    # public API
    def build(self, groups: Sequence[SiblingGroup]) -> list[CreditReference]:
        """
        One reference per group, in order. Groups that are not mixed get `source="none"` (nothing to contrast).

        Never raises because of the LLM backend: failures fall back per group and are counted in `stats`; the
        counters of this build are in `last_build_stats` and, as log metrics, in [`~SiblingReferenceBuilder.step_metrics`].
        """
        start = time.monotonic()
        stats = empty_stats()
        stats["groups"] = len(groups)
        refs: list[CreditReference | None] = [None] * len(groups)
        evidences: dict[int, Evidence] = {}
        for i, group in enumerate(groups):
            if group.is_mixed:
                evidences[i] = self._evidence(group)
            else:
                refs[i] = self._none(group, [])
        if self.backend == "litellm" and evidences:
            left = None if self.step_budget is None else self.step_budget - (time.monotonic() - start)
            last_error = self._llm_references(groups, evidences, refs, stats, budget=left)
        else:
            last_error = None
            for i, evidence in evidences.items():
                refs[i] = self._contrast(groups[i], evidence, source="contrast")
        for ref in refs:
            stats[ref.source] += 1
        stats["build_s"] = time.monotonic() - start
        if stats["errors"]:
            endpoint = getattr(self.llm_client, "endpoint", "a custom llm_client")
            model = getattr(self.llm_client, "model", None)
            logger.warning(failure_warning(stats, last_error, endpoint=endpoint, model=model, fallback=self.fallback))
        self.last_build_stats = stats
        accumulate(self.stats, stats)
        return refs

    def step_metrics(self) -> dict[str, float]:
        """`sgcd/reference/...` counters of the last build, for the trainer's logs (`{}` for the contrast backend)."""
        return step_metrics(self.last_build_stats) if self.backend == "litellm" else {}

    def state_dict(self) -> dict:
        """Cumulative counters, for checkpoint resume."""
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        """Restore cumulative counters saved by [`~SiblingReferenceBuilder.state_dict`]."""
        self.stats = {**empty_stats(), **dict(state.get("stats", {}))}

    # internals
    def _private_values(self, group: SiblingGroup) -> list:
        return [private_values(r.row, self.private_columns) for r in group.rollouts]

    def _evidence(self, group: SiblingGroup) -> Evidence:
        return build_evidence(
            group,
            sanitizer=Sanitizer(self._private_values(group)),
            max_input_tokens=self.max_input_tokens,
            max_observation_chars=self.observation_max_chars,
            count_tokens=self.count_tokens,
        )

    def _finish(self, group, evidence, sections, source, extra_masked=(), **llm) -> CreditReference:
        text = cap_reference(format_reference(sections), self.tokenizer, self.max_reference_tokens)
        masked = list(dict.fromkeys([*evidence.masked_literals, *extra_masked]))
        return CreditReference(
            text=text,
            sections=split_sections(text),
            masked_literals=masked,
            source=source,
            group_index=group.group_index,
            **llm,
        )

    def _contrast(self, group, evidence, *, source, **llm) -> CreditReference:
        start = time.perf_counter()
        ref = self._finish(group, evidence, contrast_sections(evidence), source, **llm)
        if source == "contrast":
            ref.latency_s = time.perf_counter() - start
        return ref

    def _none(self, group, masked_literals, **llm) -> CreditReference:
        return CreditReference(
            text="",
            sections={},
            masked_literals=list(masked_literals),
            source="none",
            group_index=group.group_index,
            **llm,
        )

    def _llm_references(self, groups, evidences, refs, stats, *, budget: float | None) -> str | None:
        """Ask the LLM for every evidence at once; returns the last error message (or `None`)."""
        order = list(evidences)
        requests = [
            (
                f"{evidences[i].digest}|prompt={PROMPT_VERSION}|max_tokens={self.max_reference_tokens}",
                render_reference_messages(evidences[i]),
            )
            for i in order
        ]
        if budget is not None and budget <= 0:
            results = [failed_result("step budget spent on evidence", "budget_exhausted", budget_exhausted=True)]
            results *= len(order)
        else:
            try:
                complete = getattr(self.llm_client, "complete_many", self.llm_client)
                results = list(complete(requests) if budget is None else complete(requests, budget=budget))
                if len(results) != len(requests):
                    raise RuntimeError(f"the LLM client returned {len(results)} results for {len(requests)} requests")
            except Exception as exc:  # noqa: BLE001 - training must never stop because of the LLM
                results = [failed_result(f"{type(exc).__name__}: {exc}", "other")] * len(order)
        last_error = None
        for i, result in zip(order, results):
            refs[i], error = self._from_result(groups[i], evidences[i], result, stats)
            last_error = error or last_error
        return last_error

    def _from_result(self, group, evidence, result: LLMResult, stats) -> tuple[CreditReference, str | None]:
        account(result, stats)
        llm = {
            "latency_s": result.latency_s,
            "cost_usd": result.cost_usd,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        answer = (
            None
            if result.text is None
            else cut_to_bytes(result.text, ANSWER_BYTES_PER_TOKEN * self.max_reference_tokens)
        )
        sections = parse_reference_sections(answer) if result.error is None else None
        if sections is not None:
            names = visible_tool_names(group)
            private = [*self._private_values(group), *evidence.masked_literals]
            clean = Sanitizer(private, keep=names)(format_reference(sections))
            sections = split_sections(clean.text)
            literals = [a or b for a, b in _QUOTED_LITERAL_RE.findall(sections[SECTION_TITLES[4]])]
            literals = [x for x in literals if x not in names and not PLACEHOLDER_RE.fullmatch(x)]
            return self._finish(group, evidence, sections, "llm", [*clean.masked, *literals], **llm), None
        kind = "malformed" if result.error is None else (result.error_class or _guess_class(result))
        stats["errors"] += 1
        stats[f"errors/{kind}"] += 1
        reason = result.error or "malformed reference (fewer than 3 of the 5 sections)"
        if self.fallback == "contrast":
            return self._contrast(group, evidence, source="fallback", **llm), reason
        return self._none(group, evidence.masked_literals, **llm), reason


def sibling_contexts(
    group: SiblingGroup,
    *,
    private_columns: Sequence[str],
    observation_max_chars: int,
    tokenizer=None,
    max_tokens: int | None = None,
) -> list:
    """Teacher context per rollout for the sibling-context modes (`no_reference`, `sdpo`): a raw successful sibling
    other than the rollout itself, sanitized, no LLM.

    A rollout is never shown its own completion (the teacher would then hold the answer it is scoring): a failed
    rollout gets the shortest successful sibling, a successful one the shortest *other* success, and a lone success
    gets no teacher (`None`), as in SDPO's reference code (`dont_reprompt_on_self_success`). Ties go to the lowest row
    index, so the choice is deterministic.

    Args:
        group ([`SiblingGroup`]):
            The group; its rollouts' `row` dicts hold the private values.
        private_columns (`Sequence[str]`):
            Columns whose values are masked in the rendered sibling.
        observation_max_chars (`int`):
            Tool observations are truncated to this many characters (after sanitizing).
        tokenizer (*optional*), max_tokens (`int`, *optional*):
            Cap each context at `max_tokens` tokens ([`cap_reference`], as the builder caps its references); no cap
            when `max_tokens` is `None`.

    Returns:
        `list[CreditReference | None]`: one entry per rollout of the group, in order.
    """
    successes = [r for r, ok in zip(group.rollouts, group.success) if ok]
    if not successes:
        return [None] * len(group.rollouts)
    sanitizer = Sanitizer([private_values(r.row, private_columns) for r in group.rollouts])
    # Sanitize each step before truncating it, so a secret cut in half by the truncation cannot leak.
    rendered = {
        r.index: render_sanitized_trace(r.completion, sanitizer=sanitizer, max_observation_chars=observation_max_chars)
        for r in successes
    }
    ranked = sorted(rendered, key=lambda index: (len(rendered[index].text), index))  # shortest first
    contexts = []
    for rollout in group.rollouts:
        chosen = next((index for index in ranked if index != rollout.index), None)
        if chosen is None:
            contexts.append(None)
            continue
        clean = rendered[chosen]
        text = "A successful attempt at this same task:\n" + clean.text
        contexts.append(
            CreditReference(
                text=text if max_tokens is None else cap_reference(text, tokenizer, max_tokens),
                sections={},
                masked_literals=list(clean.masked),
                source="sibling",
                group_index=group.group_index,
            )
        )
    return contexts


def _guess_class(result: LLMResult) -> str:
    return "timeout" if result.timed_out else "other"


def _token_counter(tokenizer) -> Callable[[str], int]:
    if tokenizer is None:
        return approx_token_count
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
