"""The text form of a rollout: policy-visible steps (`ASSISTANT: ...`, `CALL name(args)`, `OBS name: ...`).

Pure rendering, no I/O and no sanitizing (that is [`~trl_sgcd.credit.reference.evidence.build_evidence`]'s job, which
sanitizes every step before any truncation). Also home of the one tool-error predicate, [`is_tool_error`], shared by
the contrast reference (which failed calls to name) and the tool-use audit (the tool failure rate), so the two can
never disagree.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from trl_sgcd.credit.types import TraceStep

__all__ = ["TraceStep", "format_steps", "is_tool_error", "render_task", "render_trace", "trace_steps"]

_ERROR_KEYS = ("error", "exception")
_ERROR_TEXT_RE = re.compile(r"(?i)^(?:errors?|exception|traceback|failed|failure)\b")
_ERROR_JSON_PREFIX_RE = re.compile(r"""^\{\s*['"](?:error|exception)['"]\s*:""", re.IGNORECASE)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # multimodal parts
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content).strip()
    return str(content).strip()


def is_tool_error(content: Any) -> bool:
    """
    Whether a tool observation reports an error.

    An error is: a mapping with a non-empty `"error"` or `"exception"` value (what `AirlineEnv` returns, and the
    Python `dict` repr TRL writes when a tool raises, `"{'error': '...'}"`, parsed as JSON or as a Python literal); a
    truncated object that starts with such a key; or text whose first word is `Error`/`Errors`, `Exception`,
    `Traceback`, `Failed` or `Failure` (any case). A mapping without those keys (`{"status": "error-free"}`) is not.

    Args:
        content (`str`, `dict`, `list` or `None`):
            The `content` of a tool message (a list of content parts is joined).

    Returns:
        `bool`: True for an error observation.
    """
    if isinstance(content, dict):
        return any(content.get(key) not in (None, "", False) for key in _ERROR_KEYS)
    text = _content_text(content)
    if text.startswith("{"):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            return isinstance(value, dict) and is_tool_error(value)
        return bool(_ERROR_JSON_PREFIX_RE.match(text))  # unparseable (truncated) object
    return bool(_ERROR_TEXT_RE.match(text))


def _call_parts(call: dict) -> tuple[str, str, tuple[str, ...]]:
    function = call.get("function", call) if isinstance(call, dict) else {}
    name = str(function.get("name", "tool"))
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return name, args, ()
    keys = tuple(sorted(str(k) for k in args)) if isinstance(args, dict) else ()
    return name, json.dumps(args, sort_keys=True, ensure_ascii=False, default=str), keys


def trace_steps(completion: Any) -> list[TraceStep]:
    """Structured policy-visible steps of one completion (a string or a list of chat messages)."""
    if not isinstance(completion, list):
        text = _content_text(completion)
        return [TraceStep("say", text)] if text else []
    steps, call_names = [], {}
    for message in completion:
        role = message.get("role", "assistant")
        text = _content_text(message.get("content"))
        if role == "assistant":
            if text:
                steps.append(TraceStep("say", text))
            for call in message.get("tool_calls") or []:
                name, args, keys = _call_parts(call)
                call_names[call.get("id")] = name
                steps.append(TraceStep("call", args, name=name, arg_keys=keys))
        else:
            name = message.get("name") or call_names.get(message.get("tool_call_id")) or role
            steps.append(TraceStep("obs", text, name=str(name), is_error=is_tool_error(text)))
    return steps


def _truncate(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]"


def format_steps(steps: list[TraceStep], *, max_observation_chars: int | None) -> str:
    """Readable trace: `ASSISTANT: ...`, `CALL name(args-json)`, `OBS name: ...` (observations truncated)."""
    lines = []
    for step in steps:
        if step.kind == "say":
            lines.append(f"ASSISTANT: {step.text}")
        elif step.kind == "call":
            lines.append(f"CALL {step.name}({step.text})")
        else:
            lines.append(f"OBS {step.name}: {_truncate(step.text, max_observation_chars)}")
    return "\n".join(lines)


def render_trace(completion: Any, *, max_observation_chars: int | None) -> str:
    """One sibling's policy-visible trace as readable text (no sanitizing: see `build_evidence`)."""
    return format_steps(trace_steps(completion), max_observation_chars=max_observation_chars)


def render_task(prompt: Any) -> str:
    """The task instruction as text: a plain string, or `role: content` blocks of the prompt messages."""
    if not isinstance(prompt, list):
        return _content_text(prompt)
    return "\n\n".join(f"{m.get('role', 'user')}: {_content_text(m.get('content'))}" for m in prompt)
