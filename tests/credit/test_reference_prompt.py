"""The credit-reference prompt and its parser: role, rules, sections and siblings in the prompt; numbered and bold
headers accepted; malformed answers rejected."""

import pytest

from trl_sgcd.credit.reference.evidence import build_evidence
from trl_sgcd.credit.reference.prompt import SECTION_TITLES, parse_reference_sections, render_reference_messages
from trl_sgcd.credit.reference.sanitize import Sanitizer
from trl_sgcd.testing.llm_server import VALID_REFERENCE
from trl_sgcd.testing.samples import sample_group


def test_prompt_has_role_rules_sections_and_siblings():
    evidence = build_evidence(sample_group(), sanitizer=Sanitizer(), max_input_tokens=12000, max_observation_chars=512)
    system, user = render_reference_messages(evidence)
    assert system["role"] == "system" and user["role"] == "user"
    assert "training-time credit analyst" in system["content"]
    assert "Use only information present in the visible traces" in system["content"]
    assert (
        "Do not quote hidden labels, evaluator or oracle reports, credentials, or final answer literals"
        in system["content"]
    )
    for title in SECTION_TITLES:
        assert f"## {title}" in system["content"]
    assert evidence.task in user["content"]
    assert user["content"].count('outcome="success"') == 2 and user["content"].count('outcome="failure"') == 2


def test_parse_sections():
    sections = parse_reference_sections(VALID_REFERENCE)
    assert list(sections) == list(SECTION_TITLES)
    assert sections["Deviation points"].startswith("- step 2: called cancel_reservation")


def test_parse_accepts_numbered_and_bold_headers():
    text = "Intro\n**1. State checks**\n- a\n### 2) Successful action branches:\n- b\nDeviation points\n- c"
    sections = parse_reference_sections(text)
    assert sections["State checks"] == "- a" and sections["Successful action branches"] == "- b"
    assert sections["Deviation points"] == "- c" and sections["Failed branches and why"] == ""


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "no sections at all",
        "## State checks\n- a\n## Deviation points\n- b",
        "## State checks\n\n## Deviation points\n\n## Failed branches and why\n- x",
    ],
)
def test_parse_rejects_malformed(text):
    assert parse_reference_sections(text) is None
