"""Real HTTP through litellm against the local OpenAI-compatible server (`trl_sgcd.testing.llm_server`), no mocks.

Deadlines, retries, concurrency, cache, fallbacks, and the leakage boundary (no planted secret reaches the server).
"""

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
from trl_sgcd.credit.reference.llm import LiteLLMClient
from trl_sgcd.credit.reference.prompt import SECTION_TITLES
from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer
from trl_sgcd.testing.samples import PLANTED, sample_group

MODEL = "openai/test-model"


def _groups(n, tag):
    return [sample_group(g, tag=f"{tag}-{g}") for g in range(n)]


def _builder(server, **kwargs):
    client_kwargs = {
        k: kwargs.pop(k)
        for k in ("deadline", "retries", "concurrency", "cache_dir", "backoff_base", "backoff_max")
        if k in kwargs
    }
    client_kwargs.setdefault("backoff_base", 0.01)
    url = server if isinstance(server, str) else server.base_url
    client = LiteLLMClient(kwargs.pop("model", MODEL), api_base=url, **client_kwargs)
    return SiblingReferenceBuilder("litellm", llm_client=client, **kwargs)


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module", autouse=True)
def warm_litellm():
    """Import litellm and open its client once, so timings below measure requests, not the import (~3 s)."""
    with FakeLLMServer(answer="warm") as server:
        LiteLLMClient(MODEL, api_base=server.base_url).complete_many([("warm", [{"role": "user", "content": "hi"}])])


def test_server_speaks_openai_format():
    with FakeLLMServer(answer="hello", usage=(7, 3)) as server:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            payload = json.loads(response.read())
        assert payload["choices"][0]["message"]["content"] == "hello"
        assert payload["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert server.requests[0]["messages"][0]["content"] == "x"


def test_answers_parse_into_llm_references():
    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        builder = _builder(server)
        refs = builder.build(_groups(3, "parse"))
        assert server.num_requests == 3
    for ref in refs:
        assert ref.source == "llm" and list(ref.sections) == list(SECTION_TITLES)
        assert all(ref.sections[title] for title in SECTION_TITLES)
        assert ref.prompt_tokens == 100 and ref.completion_tokens == 20
        assert ref.cost_usd is None  # unknown price for "test-model": None, never 0
    assert builder.stats["llm"] == 3 and builder.stats["cost_usd"] is None


def test_known_model_price_gives_a_cost():
    with FakeLLMServer(answer=VALID_REFERENCE, usage=(1000, 100)) as server:
        ref = _builder(server, model="openai/gpt-4o-mini").build(_groups(1, "cost"))[0]
    assert ref.source == "llm" and ref.cost_usd is not None and ref.cost_usd > 0


def test_concurrency_8_groups_in_one_latency():
    with FakeLLMServer(answer=VALID_REFERENCE, latency=1.0) as server:
        builder = _builder(server, concurrency=8)
        start = time.perf_counter()
        refs = builder.build(_groups(8, "conc"))
        elapsed = time.perf_counter() - start
    assert [r.source for r in refs] == ["llm"] * 8
    assert elapsed < 2.0, f"8 requests at 1 s latency with concurrency 8 took {elapsed:.2f} s (one wave: < 2 s)"


def test_concurrency_limit_is_respected():
    with FakeLLMServer(answer=VALID_REFERENCE, latency=0.3) as server:
        start = time.perf_counter()
        _builder(server, concurrency=2).build(_groups(4, "limit"))
        elapsed = time.perf_counter() - start
        times = sorted(server.request_times)
    assert elapsed >= 0.6  # two waves
    assert times[2] - times[0] >= 0.25  # the third request waited for a slot


def test_hanging_server_hits_the_deadline_and_falls_back():
    with FakeLLMServer(hang=True) as server:
        builder = _builder(server, deadline=1.0, retries=0)
        start = time.perf_counter()
        refs = builder.build(_groups(2, "hang"))
        elapsed = time.perf_counter() - start
    assert elapsed <= 1.0 + 0.5, f"build took {elapsed:.2f} s with a 1 s deadline"
    assert [r.source for r in refs] == ["fallback", "fallback"]
    assert all(r.text and r.sections["Deviation points"] for r in refs)
    stats = builder.last_build_stats
    assert stats["fallback"] == 2 and stats["timeouts"] == 2 and stats["errors"] == 2


def test_hanging_server_with_one_retry_is_bounded():
    with FakeLLMServer(hang=True) as server:
        builder = _builder(server, deadline=0.5, retries=1)
        start = time.perf_counter()
        ref = builder.build(_groups(1, "hang-retry"))[0]
        elapsed = time.perf_counter() - start
        assert server.num_requests == 2
    assert ref.source == "fallback" and elapsed <= 2 * 0.5 + 0.5


@pytest.mark.parametrize("status", [429, 500])
def test_retryable_status_is_retried_then_succeeds(status):
    with FakeLLMServer(answer=VALID_REFERENCE, fail_first=2, fail_status=status) as server:
        builder = _builder(server, retries=3)
        ref = builder.build(_groups(1, f"retry-{status}"))[0]
        assert server.num_requests == 3  # two failures, then the answer
    assert ref.source == "llm"
    assert builder.last_build_stats["attempts"] == 3 and builder.last_build_stats["errors"] == 0


@pytest.mark.parametrize("status", [429, 500])
def test_retries_exhausted_fall_back(status):
    with FakeLLMServer(answer=VALID_REFERENCE, fail_first=100, fail_status=status) as server:
        builder = _builder(server, retries=2)
        ref = builder.build(_groups(1, f"exhaust-{status}"))[0]
        assert server.num_requests == 3  # 1 + 2 retries
    assert ref.source == "fallback" and builder.last_build_stats["errors"] == 1


def test_client_error_is_not_retried():
    with FakeLLMServer(answer=VALID_REFERENCE, fail_first=100, fail_status=400) as server:
        ref = _builder(server, retries=3).build(_groups(1, "400"))[0]
        assert server.num_requests == 1
    assert ref.source == "fallback"


def test_garbage_answers_fall_back():
    with FakeLLMServer(garbage=True) as server:
        ref = _builder(server, retries=0).build(_groups(1, "garbage"))[0]
    assert ref.source == "fallback"
    with FakeLLMServer(answer="I am not following the format at all.") as server:
        ref = _builder(server).build(_groups(1, "malformed"))[0]
    assert ref.source == "fallback"


def test_fallback_none_gives_empty_reference():
    with FakeLLMServer(answer="") as server:
        builder = _builder(server, fallback="none")
        refs = builder.build(_groups(2, "none"))
    assert [(r.source, r.text) for r in refs] == [("none", ""), ("none", "")]
    assert builder.last_build_stats["none"] == 2


def test_cache_makes_second_build_free(tmp_path):
    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        first = _builder(server, cache_dir=str(tmp_path)).build(_groups(3, "cache"))
        assert server.num_requests == 3
        builder = _builder(server, cache_dir=str(tmp_path))  # a fresh builder: the cache is on disk
        second = builder.build(_groups(3, "cache"))
        assert server.num_requests == 3
    assert [r.text for r in first] == [r.text for r in second]
    assert builder.last_build_stats["cache_hits"] == 3 and builder.last_build_stats["requests"] == 0
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_planted_secrets_never_reach_the_server():
    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        builder = _builder(server, private_columns=["gold_answer", "gold_actions"])
        refs = builder.build(_groups(2, "leak"))
        bodies = list(server.raw_bodies)
    assert len(bodies) == 2
    card_digits = PLANTED["card"].replace(" ", "")
    for raw in bodies:
        decoded = json.dumps(json.loads(raw), ensure_ascii=False)
        for text in (raw, decoded):
            for value in [*PLANTED.values(), card_digits, "ZFA04Y"]:
                assert value not in text, f"{value!r} leaked to the LLM"
        assert "[CARD]" in raw and "[SECRET]" in raw and "[PRIVATE]" in raw
    assert PLANTED["gold"] in refs[0].masked_literals


def test_complete_many_inside_a_running_event_loop():
    async def caller(url):
        client = LiteLLMClient(MODEL, api_base=url)
        return client.complete_many([("k1", [{"role": "user", "content": "a"}])])

    with FakeLLMServer(answer="x") as server:
        results = asyncio.run(caller(server.base_url))
    assert results[0].text == "x" and results[0].error is None


# --- the step budget, failure classes and what the log says -----------------------------------------------------------
def test_step_budget_bounds_a_hang_across_retries_and_waves():
    with FakeLLMServer(hang=True) as server:
        builder = _builder(server, deadline=30.0, retries=3, concurrency=2, step_budget=1.5)
        start = time.perf_counter()
        refs = builder.build(_groups(6, "budget"))  # 3 waves x 4 attempts x 30 s without the budget
        elapsed = time.perf_counter() - start
        assert server.num_requests == 2  # the second and third waves were never sent
    assert elapsed <= 1.5 + 0.5, f"build took {elapsed:.2f} s with a 1.5 s step budget"
    assert [r.source for r in refs] == ["fallback"] * 6
    metrics = builder.step_metrics()
    assert metrics["sgcd/reference/budget_exhausted"] == 6 and metrics["sgcd/reference/fallbacks"] == 6
    assert metrics["sgcd/reference/timeouts"] == 2 and metrics["sgcd/reference/attempts"] == 2
    assert metrics["sgcd/reference/errors/timeout"] == 2 and metrics["sgcd/reference/errors/budget_exhausted"] == 4
    assert metrics["sgcd/reference/build_s"] == pytest.approx(elapsed, abs=0.1)


def test_step_budget_stops_retries_of_rate_limits():
    with FakeLLMServer(mode="429") as server:
        builder = _builder(server, retries=50, backoff_base=0.2, backoff_max=0.2, step_budget=1.0)
        start = time.perf_counter()
        ref = builder.build(_groups(1, "429"))[0]
        elapsed = time.perf_counter() - start
        attempts = server.num_requests
    assert elapsed <= 1.0 + 0.5 and 2 <= attempts < 51
    metrics = builder.step_metrics()
    # every attempt is a 429, except that under load the last one can be sent in the budget's last moments and time
    # out: the group's failure is still reported as rate limiting, the cause of the spent budget
    assert ref.source == "fallback" and attempts - 1 <= metrics["sgcd/reference/rate_limited"] <= attempts
    assert metrics["sgcd/reference/errors/rate_limited"] == 1 and metrics["sgcd/reference/budget_exhausted"] == 1
    assert metrics["sgcd/reference/errors/timeout"] == 0


def test_a_retry_cut_by_the_budget_reports_the_rate_limit_that_spent_it():
    with FakeLLMServer(mode="hang", fail_first=1, fail_status=429) as server:
        builder = _builder(server, deadline=30.0, retries=3, backoff_base=0.05, backoff_max=0.05, step_budget=1.0)
        ref = builder.build(_groups(1, "cut"))[0]
        assert server.num_requests == 2  # a 429, then a retry that hangs until the budget cuts it
    metrics = builder.step_metrics()
    assert ref.source == "fallback" and metrics["sgcd/reference/budget_exhausted"] == 1
    assert metrics["sgcd/reference/errors/rate_limited"] == 1 and metrics["sgcd/reference/errors/timeout"] == 0
    assert metrics["sgcd/reference/rate_limited"] == 1 and metrics["sgcd/reference/timeouts"] == 1


@pytest.mark.parametrize(
    "mode, kind",
    [("500", "server_error"), ("garbage", "bad_response"), ("drop", "connection"), ("429", "rate_limited")],
)
def test_each_fault_is_counted_by_class(mode, kind):
    with FakeLLMServer(mode=mode) as server:
        builder = _builder(server, retries=1)
        refs = builder.build(_groups(2, f"class-{mode}"))
        assert server.num_requests == 4 and set(server.modes_seen) == {mode}
    metrics = builder.step_metrics()
    assert [r.source for r in refs] == ["fallback", "fallback"]
    assert metrics[f"sgcd/reference/errors/{kind}"] == 2 and metrics["sgcd/reference/attempts"] == 4
    others = [k for k, v in metrics.items() if "/errors/" in k and v and not k.endswith(kind)]
    assert others == []


def test_closed_port_warning_names_the_url_and_the_field(caplog):
    url = _closed_port_url()
    builder = _builder(url, retries=0)
    with caplog.at_level(logging.WARNING, logger="trl_sgcd.credit.reference.builder"):
        ref = builder.build(_groups(1, "closed"))[0]
    assert ref.source == "fallback" and builder.step_metrics()["sgcd/reference/errors/connection"] == 1
    (record,) = [r for r in caplog.records if "Credit reference LLM" in r.message]
    assert url in record.message and "credit_reference_api_base" in record.message
    assert "Connection error" in record.message  # the last error itself


def test_huge_answer_is_cut_before_parsing_and_capping(tokenizer):
    with FakeLLMServer(mode="huge") as server:
        builder = _builder(server, tokenizer=tokenizer, max_reference_tokens=64)
        start = time.perf_counter()
        ref = builder.build(_groups(1, "huge"))[0]
        elapsed = time.perf_counter() - start
    assert ref.source == "llm" and len(tokenizer(ref.text, add_special_tokens=False)["input_ids"]) <= 64
    assert elapsed < 3.0, f"a 5 MB answer took {elapsed:.1f} s"  # tokenizing it whole took 15 s


def test_the_first_call_of_a_fresh_process_is_not_charged_for_the_litellm_import(tmp_path):
    """With a 1 s deadline, the first request of a process succeeds: litellm (4-17 s to import) was imported and the
    client warmed when the builder was made, outside the step's clock."""
    script = tmp_path / "first_call.py"
    script.write_text(
        "import sys, time\n"
        "from trl_sgcd.credit.reference.llm import LiteLLMClient\n"
        "from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder\n"
        "from trl_sgcd.testing.samples import sample_group\n"
        "client = LiteLLMClient('openai/test-model', api_base=sys.argv[1], deadline=1.0, retries=0)\n"
        "builder = SiblingReferenceBuilder('litellm', llm_client=client, step_budget=1.5)\n"
        "ref = builder.build([sample_group()])[0]\n"
        "print(ref.source, builder.last_build_stats['build_s'])\n"
    )
    with FakeLLMServer() as server:
        proc = subprocess.run(
            [sys.executable, str(script), server.base_url], capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    source, build_s = proc.stdout.split()
    assert source == "llm" and float(build_s) <= 1.5


def test_server_runs_as_a_module_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "trl_sgcd.testing.llm_server", "--port", "0", "--mode", "500"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
        request = urllib.request.Request(
            f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError, match="500"):
            urllib.request.urlopen(request, timeout=5)
    finally:
        proc.terminate()
    assert proc.wait(timeout=10) == 0
