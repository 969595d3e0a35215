"""The credit-reference prompt (paper, Table 5) and its parser. Rendering only, no I/O (traces are in `traces.py`).

The external LLM plays a training-time credit analyst: from one task and its sanitized sibling traces with verifier
outcomes, it writes a stepwise credit reference in exactly five sections. The offline contrast builder writes the
same five sections, so both parse with [`parse_reference_sections`]. The reference is inserted only into the
teacher-side scoring prefix, never into the student rollout or deployment prompt.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from trl_sgcd.credit.reference.sanitize_patterns import PLACEHOLDERS

if TYPE_CHECKING:
    from trl_sgcd.credit.types import Evidence

SECTION_TITLES = (
    "State checks",
    "Successful action branches",
    "Failed branches and why",
    "Deviation points",
    "Literals to keep masked",
)
MIN_SECTIONS = 3

SYSTEM_PROMPT_TEMPLATE = """You are a training-time credit analyst. You receive one task and several rollouts ("siblings") that \
the policy generated for it, each with its verifier outcome (success or failure). Write a concise, stepwise credit \
reference that explains which steps made the successful siblings succeed and where the failed siblings went wrong.

Rules:
- Use only information present in the visible traces below.
- Do not quote hidden labels, evaluator or oracle reports, credentials, or final answer literals. Values shown as \
placeholders such as {placeholders} stay masked: never guess or reconstruct them.
- Under "Deviation points", for each failed sibling, quote its first step that leaves what the successful siblings \
did exactly as it is written in its trace (tool name and arguments, or its answer), beside the successful \
sibling's step at that point, and name the argument values that differ; summarize its later steps in one line.
- Elsewhere prefer state checks and action choices (which tool, in which order, with which kind of argument) over \
copying task-specific values.
- Be concise: short bullet points, one idea each.

Answer with exactly these five sections, in this order, each under its own header line:
{{headers}}"""
SYSTEM_PROMPT = SYSTEM_PROMPT_TEMPLATE.format(placeholders=", ".join(f"[{p}]" for p in PLACEHOLDERS))

SECTION_HINTS = (
    "state the successful siblings establish before acting (what they look up or verify)",
    "the reusable action sequence(s) that led to success",
    "the failed branches and why the visible evidence suggests they are wrong",
    "per failed sibling: its first deviating step quoted as written, beside the successful step, and what differs",
    "literals or values that must stay masked during credit scoring (describe them; do not copy secrets)",
)


PROMPT_VERSION = hashlib.sha256((SYSTEM_PROMPT + "".join(SECTION_TITLES + SECTION_HINTS)).encode()).hexdigest()[:12]
"""Changes whenever the prompt changes; part of the LLM cache key, so a new prompt never reuses old answers."""


def section_header(title: str) -> str:
    """Markdown header line of one reference section."""
    return f"## {title}"


def render_reference_messages(evidence: Evidence) -> list[dict]:
    """
    Chat messages that ask the external LLM for a credit reference.

    Args:
        evidence ([`~trl_sgcd.credit.reference.evidence.Evidence`]):
            Sanitized task and selected sibling traces with outcomes.

    Returns:
        `list[dict]`: a system message (role, rules, output format) and a user message (task and siblings).
    """
    headers = "\n".join(f"{section_header(t)}  <- {h}" for t, h in zip(SECTION_TITLES, SECTION_HINTS))
    num_success = sum(evidence.outcomes)
    parts = [
        "# Task instruction",
        evidence.task,
        "",
        f"# Sibling rollouts ({len(evidence.traces)} shown: {num_success} succeeded, "
        f"{len(evidence.traces) - num_success} failed)",
    ]
    for number, (trace, ok) in enumerate(zip(evidence.traces, evidence.outcomes), start=1):
        outcome = "success" if ok else "failure"
        parts += [f'<sibling id="{number}" outcome="{outcome}">', trace or "(empty rollout)", "</sibling>"]
    parts += ["", "Write the credit reference now, using exactly the five section headers."]
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(headers=headers)},
        {"role": "user", "content": "\n".join(parts)},
    ]


_HEADER_RE = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*|\*\*)?(?:\(?\d+[.)][ \t]*)?(?P<title>"
    + "|".join(re.escape(t) for t in SECTION_TITLES)
    + r")[ \t]*(?:\*\*)?[ \t]*:?[ \t]*(?:\*\*)?[ \t]*$"
)


def split_sections(text: str) -> dict[str, str]:
    """All five sections of a reference text (`""` for a missing one), without validity checks."""
    sections = dict.fromkeys(SECTION_TITLES, "")
    matches = list(_HEADER_RE.finditer(text or ""))
    canonical = {t.lower(): t for t in SECTION_TITLES}
    for match, following in zip(matches, [*matches[1:], None]):
        title = canonical[match.group("title").lower()]
        body = text[match.end() : following.start() if following else len(text)].strip()
        if body and not sections[title]:
            sections[title] = body
    return sections


def parse_reference_sections(text: str | None) -> dict[str, str] | None:
    """
    Parse a credit reference into its five sections.

    Args:
        text (`str` or `None`):
            Reference text (markdown headers `## <title>`; numbered or bold headers are accepted too).

    Returns:
        `dict[str, str]` or `None`: section title -> body for every title in `SECTION_TITLES` (`""` when missing), or
        `None` when the text is empty or fewer than 3 sections have a body.
    """
    if not text or not text.strip():
        return None
    sections = split_sections(text)
    if sum(bool(body) for body in sections.values()) < MIN_SECTIONS:
        return None
    return sections


def format_reference(sections: dict[str, str]) -> str:
    """Canonical text of a reference: the five headers in order, each followed by its body."""
    blocks = [f"{section_header(t)}\n{(sections.get(t) or '').strip() or '- (none)'}" for t in SECTION_TITLES]
    return "\n\n".join(blocks)
