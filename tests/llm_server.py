"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

No mocks: litellm talks to it over HTTP exactly as it would to vLLM or OpenAI. Behaviour is set per test:

```python
with FakeLLMServer(answer="## State checks\n...", latency=1.0) as server:
    client = LiteLLMClient("openai/test-model", api_base=server.base_url)
    ...
    assert server.num_requests == 8
```

- `answer`: a string, or a callable `(request_body: dict) -> str` giving the assistant message content;
- `latency`: seconds to sleep before answering;
- `hang`: never answer (the handler blocks until the server stops; threads are daemons, so shutdown never waits);
- `fail_first` / `fail_status`: answer the first N requests with that HTTP status (e.g. 429, 500), then normally;
- `garbage`: answer 200 with a body that is not JSON;
- every request body is recorded in `server.requests` (parsed JSON) and `server.raw_bodies` (text).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROUTES = ("/v1/chat/completions", "/chat/completions")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # keep test output quiet
        return

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        if self.path.split("?")[0] not in ROUTES:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        owner = self.server.owner
        number = owner._record(raw)
        if owner.hang:
            owner._stopped.wait()  # released when the server stops
            return
        if owner.latency > 0:
            if owner._stopped.wait(owner.latency):
                return
        if number <= owner.fail_first:
            status = owner.fail_status
            kind = "rate_limit_error" if status == 429 else "server_error"
            self._send_json(status, {"error": {"message": f"injected {status}", "type": kind, "code": status}})
            return
        if owner.garbage:
            self._send_bytes(200, b"<html>this is not json {{{", "text/html")
            return
        body = json.loads(raw) if raw else {}
        self._send_json(200, owner._completion(body))

    def _send_json(self, status: int, payload: dict):
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline)
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog (5) drops SYNs under a burst: the client retries 1 s later
    owner: FakeLLMServer


class FakeLLMServer:
    """
    Threaded OpenAI-compatible server on `127.0.0.1` (port chosen by the OS).

    Args:
        answer (`str` or `Callable[[dict], str]`, *optional*):
            Assistant content of every successful answer.
        latency (`float`, *optional*, defaults to `0.0`):
            Seconds to wait before answering.
        hang (`bool`, *optional*, defaults to `False`):
            Never answer.
        fail_first (`int`, *optional*, defaults to `0`):
            Number of first requests answered with `fail_status`.
        fail_status (`int`, *optional*, defaults to `500`):
            HTTP status of the injected failures.
        garbage (`bool`, *optional*, defaults to `False`):
            Answer with a body that is not JSON.
        usage (`tuple[int, int]`, *optional*, defaults to `(100, 20)`):
            `(prompt_tokens, completion_tokens)` reported in every answer.
    """

    def __init__(
        self,
        *,
        answer: str | Callable[[dict], str] = "ok",
        latency: float = 0.0,
        hang: bool = False,
        fail_first: int = 0,
        fail_status: int = 500,
        garbage: bool = False,
        usage: tuple[int, int] = (100, 20),
    ):
        self.answer = answer
        self.latency = latency
        self.hang = hang
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.garbage = garbage
        self.usage = usage
        self.requests: list[dict] = []
        self.raw_bodies: list[str] = []
        self.request_times: list[float] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeLLMServer:
        self._stopped.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()  # release hanging / sleeping handlers first
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # introspection
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (`.../v1`), for `api_base`."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def num_requests(self) -> int:
        with self._lock:
            return len(self.raw_bodies)

    def reset(self) -> None:
        """Forget recorded requests (the failure counter starts again too)."""
        with self._lock:
            self.requests.clear()
            self.raw_bodies.clear()
            self.request_times.clear()

    # internals
    def _record(self, raw: str) -> int:
        with self._lock:
            self.raw_bodies.append(raw)
            self.request_times.append(time.monotonic())
            try:
                self.requests.append(json.loads(raw))
            except ValueError:
                self.requests.append({})
            return len(self.raw_bodies)

    def _completion(self, body: dict) -> dict:
        content = self.answer(body) if callable(self.answer) else self.answer
        prompt_tokens, completion_tokens = self.usage
        return {
            "id": f"chatcmpl-{self.num_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


# --- sample sibling groups (tests and benchmarks) ----------------------------------------------------------------------
PLANTED = {
    "card": "4111 1111 1111 1111",
    "api_key": "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2",
    "password": "hunter2-Zebra!",
    "email": "mia.li@example.com",
    "phone": "+1 415 555 0123",
    "gold": "refund of 345 dollars to the original card",
}
VALID_REFERENCE = """## State checks
- Look up the user and the reservation before changing anything.

## Successful action branches
- get_user_details(user_id) -> get_reservation_details(reservation_id) -> cancel_reservation(reservation_id)

## Failed branches and why
- Cancelling without reading the reservation hit an error.

## Deviation points
- step 2: called cancel_reservation where successes called get_reservation_details

## Literals to keep masked
- the reservation identifier
"""


def _call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _success_rollout(tag: str) -> list[dict]:
    return [
        {
            "role": "assistant",
            "content": f"Let me look up your profile ({tag}).",
            "tool_calls": [_call("get_user_details", user_id="mia_li_3668")],
        },
        {
            "role": "tool",
            "name": "get_user_details",
            "content": json.dumps(
                {
                    "user_id": "mia_li_3668",
                    "email": PLANTED["email"],
                    "phone": PLANTED["phone"],
                    "payment": {"card_number": PLANTED["card"]},
                    "reservations": ["ZFA04Y"],
                }
            ),
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call("get_reservation_details", reservation_id="ZFA04Y")],
        },
        {
            "role": "tool",
            "name": "get_reservation_details",
            "content": "{'reservation_id': 'ZFA04Y', 'status': 'booked', 'insurance': 'yes'}",
        },
        {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="ZFA04Y")]},
        {"role": "tool", "name": "cancel_reservation", "content": "{'status': 'cancelled'}"},
        {"role": "assistant", "content": f"Done: your reservation is cancelled, {PLANTED['gold']}."},
    ]


def _failed_rollout(tag: str) -> list[dict]:
    return [
        {
            "role": "assistant",
            "content": f"Sure ({tag}). Your password: {PLANTED['password']} is not needed.",
            "tool_calls": [_call("get_user_details", user_id="mia_li_3668")],
        },
        {
            "role": "tool",
            "name": "get_user_details",
            "content": f"user found; api key {PLANTED['api_key']}; contact {PLANTED['email']}",
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call("cancel_reservation", reservation_id="ZFA04Y", reason="change of plan")],
        },
        {
            "role": "tool",
            "name": "cancel_reservation",
            "content": "{'error': 'Cancellation requires the reservation details to be checked first'}",
        },
        {"role": "assistant", "content": f"I could not cancel it. Call me at {PLANTED['phone']}."},
    ]


def sample_group(group_index: int = 0, *, num_success: int = 2, num_failed: int = 2, tag: str = ""):
    """A mixed airline-style sibling group with planted secrets in observations and assistant text."""
    from trl_sgcd.credit.siblings import Rollout, SiblingGroup

    prompt = [
        {"role": "system", "content": "You are an airline agent. Use the tools."},
        {"role": "user", "content": f"Please cancel my reservation ZFA04Y. I am mia_li_3668. {tag}"},
    ]
    row = {
        "task_id": f"t{group_index}",
        "gold_answer": PLANTED["gold"],
        "gold_actions": [{"name": "cancel_reservation", "arguments": {"reservation_id": "ZFA04Y"}}],
    }
    completions = [_success_rollout(f"{tag}s{k}") for k in range(num_success)]
    completions += [_failed_rollout(f"{tag}f{k}") for k in range(num_failed)]
    success = [True] * num_success + [False] * num_failed
    rollouts = [
        Rollout(group_index * len(success) + k, prompt, c, float(ok), dict(row))
        for k, (c, ok) in enumerate(zip(completions, success))
    ]
    return SiblingGroup(group_index=group_index, rollouts=rollouts, success=success)


def main() -> None:
    """`python -m tests.llm_server --latency 1`: serve in its own process (prints the base URL, stops on SIGTERM/EOF)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument(
        "--answer-file", default=None, help="file whose text is every answer (default: VALID_REFERENCE)"
    )
    args = parser.parse_args()
    answer = open(args.answer_file, encoding="utf-8").read() if args.answer_file else VALID_REFERENCE
    with FakeLLMServer(answer=answer, latency=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # run until the parent closes our stdin (or kills us)


if __name__ == "__main__":
    main()
