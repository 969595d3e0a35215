"""The local server's fault modes the soak rotates through, one by one against the real litellm client: a slow drip
times out, a 429's Retry-After is honoured, a schedule and a tag make the faults a function of the request."""

import time

import pytest

from trl_sgcd.credit.reference.llm import LiteLLMClient
from trl_sgcd.testing.llm_server import FakeLLMServer

MESSAGES = [{"role": "user", "content": "hi"}]


def _client(server, **kwargs):
    kwargs.setdefault("backoff_base", 0.01)
    return LiteLLMClient("openai/test-model", api_base=server.base_url, **kwargs)


def test_a_slow_drip_is_cut_at_the_deadline_on_every_attempt():
    with FakeLLMServer(mode="drip", drip_interval=0.05) as server:  # ~100 pieces: ~5 s for the whole answer
        client = _client(server, deadline=0.8, retries=1)
        client.warm()  # the import of litellm is not the drip's time
        start = time.perf_counter()
        [result] = client.complete_many([("k", MESSAGES)], budget=5.0)
        elapsed = time.perf_counter() - start
        assert server.num_requests == 2
    assert result.error_class == "timeout" and result.attempt_errors == ("timeout", "timeout"), result
    assert elapsed < 2 * 0.8 + 1.0


def test_the_drip_answer_is_valid_once_it_has_all_arrived():
    with FakeLLMServer(mode="drip", drip_interval=0.001, answer="slow but whole") as server:
        [result] = _client(server, deadline=20.0).complete_many([("k", MESSAGES)])
    assert result.error is None and result.text == "slow but whole"


@pytest.mark.parametrize("retry_after,floor", [(1, 0.5), (None, 0.0)])
def test_retry_after_of_a_429_is_honoured(retry_after, floor):
    with FakeLLMServer(mode="429", retry_after=retry_after) as server:
        [result] = _client(server, deadline=1.0, retries=2).complete_many([("k", MESSAGES)], budget=5.0)
        times = list(server.request_times)
    assert result.error_class == "rate_limited" and len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    if retry_after:  # the client waits between half and all of it (jitter)
        assert all(floor <= gap <= retry_after + 0.5 for gap in gaps), gaps
    else:  # no header: its own backoff (base 0.01 s here)
        assert all(gap < 0.5 for gap in gaps), gaps


def test_a_schedule_and_a_tag_record_what_each_request_met():
    with FakeLLMServer(schedule=lambda n: "500" if n == 1 else "ok") as server:
        server.tag = "step-7"
        [result] = _client(server, retries=2).complete_many([("k", MESSAGES)])
        assert server.modes_seen == ["500", "ok"] and server.tags == ["step-7", "step-7"]
    assert result.error is None and result.attempt_errors == ("server_error",)
