"""`SiblingReferenceBuilder`: sanitized sibling evidence -> credit reference, one per mixed group.

Two backends write the same five sections (see `prompt.SECTION_TITLES`):

- `"contrast"` (offline default, no model): the deterministic contrast of the sanitized traces (`contrast.py`).
- `"litellm"`: an external LLM (paper, Table 5), called once per batch through [`~trl_sgcd.credit.llm.LiteLLMClient`]. A
  malformed or empty answer, an error or a deadline falls back per group (`fallback="contrast"` or `"none"`), and
  the failure is counted. `build` never raises because of the LLM: training must not stop for it.

The reference text is capped at `max_reference_tokens`; the task prompt is never truncated here.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trl_sgcd.credit.contrast import contrast_sections
from trl_sgcd.credit.evidence import Evidence, approx_token_count, build_evidence, visible_tool_names
from trl_sgcd.credit.llm import LiteLLMClient, LLMResult
from trl_sgcd.credit.prompt import (
    PROMPT_VERSION,
    SECTION_TITLES,
    format_reference,
    parse_reference_sections,
    render_reference_messages,
    split_sections,
)
from trl_sgcd.credit.sanitize import PLACEHOLDER_RE, Sanitizer, private_values
from trl_sgcd.credit.siblings import SiblingGroup

logger = logging.getLogger(__name__)

BACKENDS = ("contrast", "litellm")
FALLBACKS = ("contrast", "none")
SOURCES = ("llm", "contrast", "fallback", "none")
_QUOTED_LITERAL_RE = re.compile(r"`([^`\n]{3,80})`|\"([^\"\n]{3,80})\"")


@dataclass
class CreditReference:
    """
    Credit reference of one sibling group (teacher-side context only).

    Args:
        text (`str`): the reference, capped at `max_reference_tokens` (`""` when `source="none"`).
        sections (`dict[str, str]`): section title -> body.
        masked_literals (`list[str]`): literals masked in the evidence and the reference (their tokens get no credit).
        source (`str`): `"llm"`, `"contrast"`, `"fallback"` (contrast text because the LLM failed) or `"none"` (no
            reference: the group keeps W = 1).
        latency_s (`float`): time spent building it (LLM wall time, retries included).
        cost_usd (`float` or `None`): LLM cost; `None` when unknown.
        prompt_tokens (`int` or `None`): LLM prompt tokens.
        completion_tokens (`int` or `None`): LLM completion tokens.
        group_index (`int`): index of the sibling group.
    """

    text: str
    sections: dict[str, str]
    masked_literals: list[str]
    source: str
    latency_s: float = 0.0
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    group_index: int = -1


def _empty_stats() -> dict:
    counters = (
        "groups",
        "requests",
        "attempts",
        "llm",
        "contrast",
        "fallback",
        "none",
        "errors",
        "timeouts",
        "cache_hits",
        "prompt_tokens",
        "completion_tokens",
    )
    return {**dict.fromkeys(counters, 0), "latency_s": 0.0, "cost_usd": 0.0}


# --- builder -----------------------------------------------------------------------------------------------------------
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
        max_input_tokens (`int`, *optional*, defaults to `12000`): token budget of the evidence.
        max_reference_tokens (`int`, *optional*, defaults to `512`): cap on the reference (LLM output and text).
        cache_dir (`str` or `None`, *optional*): disk cache of LLM answers.
        fallback (`str`, *optional*, defaults to `"contrast"`): what a group gets when the LLM fails.
        observation_max_chars (`int`, *optional*, defaults to `512`): tool observation cap in the evidence.
        private_columns (`Sequence[str]`, *optional*): row columns whose values are masked as `[PRIVATE]`.
        count_tokens (`Callable[[str], int]` or `None`, *optional*): token counter (default: ~4 chars per token).
        truncate_tokens (`Callable[[str, int], str]` or `None`, *optional*): cuts a text to n tokens.
        llm_client (*optional*): object with `complete_many(requests) -> list[LLMResult]` (or such a callable),
            used instead of building a [`~trl_sgcd.credit.llm.LiteLLMClient`].
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
        max_input_tokens: int = 12000,
        max_reference_tokens: int = 512,
        cache_dir: str | None = None,
        fallback: str = "contrast",
        observation_max_chars: int = 512,
        private_columns: Sequence[str] = (),
        count_tokens: Callable[[str], int] | None = None,
        truncate_tokens: Callable[[str, int], str] | None = None,
        llm_client=None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; choose one of {list(BACKENDS)}.")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback={fallback!r} is not supported; choose one of {list(FALLBACKS)}.")
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
        self.max_input_tokens = max_input_tokens
        self.max_reference_tokens = max_reference_tokens
        self.observation_max_chars = observation_max_chars
        self.private_columns = tuple(private_columns)
        self.count_tokens = count_tokens or approx_token_count
        self.truncate_tokens = truncate_tokens
        self.llm_client = llm_client
        self.stats = _empty_stats()
        self.last_build_stats = _empty_stats()

    @classmethod
    def from_config(cls, args, tokenizer=None) -> SiblingReferenceBuilder:
        """Build from an [`SGCDConfig`] (`credit_*` fields); the API key is read from `credit_reference_api_key_env`."""
        api_key = None
        if args.credit_reference_api_key_env:
            api_key = os.environ.get(args.credit_reference_api_key_env)
            if api_key is None:
                logger.warning(
                    "credit_reference_api_key_env=%r is not set in the environment.", args.credit_reference_api_key_env
                )
        count_tokens = truncate_tokens = None
        if tokenizer is not None:

            def count_tokens(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])

            def truncate_tokens(text: str, n: int) -> str:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                return text if len(ids) <= n else tokenizer.decode(ids[:n], skip_special_tokens=True)

        return cls(
            args.credit_reference_backend,
            model=args.credit_reference_model,
            api_base=args.credit_reference_api_base,
            api_key=api_key,
            deadline=args.credit_reference_deadline,
            retries=args.credit_reference_retries,
            concurrency=args.credit_reference_concurrency,
            max_input_tokens=args.credit_reference_max_input_tokens,
            max_reference_tokens=args.credit_reference_max_tokens,
            cache_dir=args.credit_reference_cache_dir,
            fallback=args.credit_reference_fallback,
            observation_max_chars=args.credit_observation_max_chars,
            private_columns=args.credit_private_columns,
            count_tokens=count_tokens,
            truncate_tokens=truncate_tokens,
        )

    # public API
    def build(self, groups: Sequence[SiblingGroup]) -> list[CreditReference]:
        """
        One reference per group, in order. Groups that are not mixed get `source="none"` (nothing to contrast).

        Never raises because of the LLM backend: failures fall back per group and are counted in `stats`.
        """
        stats = _empty_stats()
        stats["groups"] = len(groups)
        refs: list[CreditReference | None] = [None] * len(groups)
        evidences: dict[int, Evidence] = {}
        for i, group in enumerate(groups):
            if group.is_mixed:
                evidences[i] = self._evidence(group)
            else:
                refs[i] = self._none(group, [])
        if self.backend == "litellm" and evidences:
            self._llm_references(groups, evidences, refs, stats)
        else:
            for i, evidence in evidences.items():
                refs[i] = self._contrast(groups[i], evidence, source="contrast")
        for ref in refs:
            stats[ref.source] += 1
        self.last_build_stats = stats
        self._accumulate(stats)
        return refs

    def state_dict(self) -> dict:
        """Cumulative counters, for checkpoint resume."""
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        """Restore cumulative counters saved by [`~SiblingReferenceBuilder.state_dict`]."""
        self.stats = {**_empty_stats(), **dict(state.get("stats", {}))}

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

    def _cap(self, text: str) -> str:
        limit = self.max_reference_tokens
        if self.truncate_tokens is not None:
            return self.truncate_tokens(text, limit)
        tokens = self.count_tokens(text)
        if tokens <= limit:
            return text
        keep = int(len(text) * limit / tokens)
        while keep > 0:
            cut = text[:keep].rstrip() + "\n...[reference truncated]"
            if self.count_tokens(cut) <= limit:
                return cut
            keep = int(keep * 0.9)
        return ""

    def _finish(self, group, evidence, sections, source, extra_masked=(), **llm) -> CreditReference:
        text = self._cap(format_reference(sections))
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

    def _llm_references(self, groups, evidences, refs, stats) -> None:
        order = list(evidences)
        requests = [
            (
                f"{evidences[i].digest}|prompt={PROMPT_VERSION}|max_tokens={self.max_reference_tokens}",
                render_reference_messages(evidences[i]),
            )
            for i in order
        ]
        try:
            complete = getattr(self.llm_client, "complete_many", self.llm_client)
            results = list(complete(requests))
            if len(results) != len(requests):
                raise RuntimeError(f"the LLM client returned {len(results)} results for {len(requests)} requests")
        except Exception as exc:  # noqa: BLE001 - training must never stop because of the LLM
            logger.warning("Credit-reference LLM batch failed (%s); falling back for %d group(s).", exc, len(order))
            results = [LLMResult(None, f"{type(exc).__name__}: {exc}", 0.0, None, None, None, False, 0)] * len(order)
        for i, result in zip(order, results):
            refs[i] = self._from_result(groups[i], evidences[i], result, stats)

    def _from_result(self, group, evidence, result: LLMResult, stats) -> CreditReference:
        self._account(result, stats)
        llm = {
            "latency_s": result.latency_s,
            "cost_usd": result.cost_usd,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        sections = parse_reference_sections(result.text) if result.error is None else None
        if sections is not None:
            names = visible_tool_names(group)
            private = [*self._private_values(group), *evidence.masked_literals]
            clean = Sanitizer(private, keep=names)(format_reference(sections))
            sections = split_sections(clean.text)
            literals = [a or b for a, b in _QUOTED_LITERAL_RE.findall(sections[SECTION_TITLES[4]])]
            literals = [x for x in literals if x not in names and not PLACEHOLDER_RE.fullmatch(x)]
            return self._finish(group, evidence, sections, "llm", [*clean.masked, *literals], **llm)
        stats["errors"] += 1
        reason = result.error or "malformed reference (fewer than 3 of the 5 sections)"
        logger.warning("Credit reference for group %d falls back to %r: %s", group.group_index, self.fallback, reason)
        if self.fallback == "contrast":
            return self._contrast(group, evidence, source="fallback", **llm)
        return self._none(group, evidence.masked_literals, **llm)

    @staticmethod
    def _account(result: LLMResult, stats: dict) -> None:
        if result.cached:
            stats["cache_hits"] += 1
        else:
            stats["requests"] += 1
            stats["attempts"] += result.attempts
            stats["timeouts"] += int(result.timed_out)
            if result.error is None and (result.cost_usd is None or stats["cost_usd"] is None):
                stats["cost_usd"] = None  # an answer of unknown price: the total is unknown, never under-reported
            elif stats["cost_usd"] is not None:
                stats["cost_usd"] += result.cost_usd or 0.0
        stats["latency_s"] += result.latency_s
        stats["prompt_tokens"] += result.prompt_tokens or 0
        stats["completion_tokens"] += result.completion_tokens or 0

    def _accumulate(self, stats: dict) -> None:
        for key, value in stats.items():
            if key == "cost_usd":
                known = value is not None and self.stats["cost_usd"] is not None
                self.stats["cost_usd"] = self.stats["cost_usd"] + value if known else None
            else:
                self.stats[key] += value
