"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests, benchmarks and the litellm example.

```bash
python -m trl_sgcd.testing.llm_server --port 8000        # answers every request with a valid credit reference
python examples/custom_env_litellm.py --reference-api-base http://127.0.0.1:8000/v1
```

No mocks: litellm talks to it over HTTP exactly as it would to vLLM or OpenAI. In Python:

```python
with FakeLLMServer(answer="## State checks\\n...", latency=1.0) as server:
    client = LiteLLMClient("openai/test-model", api_base=server.base_url)
    ...
    assert server.num_requests == 8
    server.mode = "hang"   # the fault mode can change while it runs
```

- `answer`: a string, or a callable `(request_body: dict) -> str` giving the assistant message content;
- `latency`: seconds to sleep before answering;
- `mode` (one of `MODES`): `"ok"`; `"hang"` (never answer; the handler blocks until the server stops); `"429"` /
  `"500"` (that status, with `Retry-After: <retry_after>` on 429); `"garbage"` (200 with a body that is not JSON);
  `"drop"` (close the connection without a response); `"huge"` (a valid answer followed by 5 MB of text); `"drip"`
  (a valid answer whose status and headers come at once and whose body then trickles in `DRIP_BYTES` bytes every
  `drip_interval` seconds: a server that is alive but slower than any sane deadline);
- `fail_first` / `fail_status`: answer the first N requests with that HTTP status, then follow `mode`;
- `schedule`: a callable `(request_number) -> mode` (numbers start at 1) that overrides `mode`, for a fault pattern
  that is a deterministic function of the request;
- every request body is recorded in `server.requests` (parsed JSON) and `server.raw_bodies` (text), the mode it met
  in `server.modes_seen`, and the value of `server.tag` when it arrived (e.g. the training step) in `server.tags`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MODES", "VALID_REFERENCE", "FakeLLMServer", "main"]

ROUTES = ("/v1/chat/completions", "/chat/completions")
MODES = ("ok", "hang", "429", "500", "garbage", "drop", "huge", "drip")
HUGE_BYTES = 5_000_000
DRIP_BYTES = 4
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
        number, mode = owner._record(raw)
        failing = number <= owner.fail_first  # the first N requests fail with fail_status, whatever the mode
        if mode == "hang" and not failing:
            owner._stopped.wait()  # released when the server stops
            return
        if owner.latency > 0 and owner._stopped.wait(owner.latency):
            return
        status = owner.fail_status if failing else {"429": 429, "500": 500}.get(mode)
        if status is not None:
            kind = "rate_limit_error" if status == 429 else "server_error"
            self._send_json(status, {"error": {"message": f"injected {status}", "type": kind, "code": status}})
        elif mode == "drop":
            self.close_connection = True  # no response at all: the client sees the socket close
        elif mode == "garbage":
            self._send_bytes(200, b"<html>this is not json {{{", "text/html")
        elif mode == "drip":
            self._drip(json.dumps(owner._completion(json.loads(raw) if raw else {})).encode("utf-8"))
        else:
            self._send_json(200, owner._completion(json.loads(raw) if raw else {}, huge=mode == "huge"))

    def _send_json(self, status: int, payload: dict):
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 429 and self.server.owner.retry_after is not None:
                self.send_header("Retry-After", str(self.server.owner.retry_after))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline)
            pass

    def _drip(self, data: bytes):
        """Status and headers now, then the body `DRIP_BYTES` at a time until it is sent, the client leaves, or the
        server stops."""
        owner = self.server.owner
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            for i in range(0, len(data), DRIP_BYTES):
                if owner._stopped.wait(owner.drip_interval):
                    return
                self.wfile.write(data[i : i + DRIP_BYTES])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog (5) drops SYNs under a burst: the client retries 1 s later
    owner: FakeLLMServer


class FakeLLMServer:
    """
    Threaded OpenAI-compatible server on `host` (`127.0.0.1`; port 0: chosen by the OS).

    Args:
        answer (`str` or `Callable[[dict], str]`, *optional*, defaults to `VALID_REFERENCE`):
            Assistant content of every successful answer.
        latency (`float`, *optional*, defaults to `0.0`):
            Seconds to wait before answering.
        mode (`str`, *optional*, defaults to `"ok"`):
            Fault mode, one of `MODES`; may be changed while the server runs.
        hang (`bool`, *optional*, defaults to `False`):
            Shorthand for `mode="hang"`.
        fail_first (`int`, *optional*, defaults to `0`):
            Number of first requests answered with `fail_status`.
        fail_status (`int`, *optional*, defaults to `500`):
            HTTP status of those failures.
        garbage (`bool`, *optional*, defaults to `False`):
            Shorthand for `mode="garbage"`.
        retry_after (`float`, `str` or `None`, *optional*, defaults to `0`):
            Value of the `Retry-After` header of every 429 answer (`None`: no header).
        drip_interval (`float`, *optional*, defaults to `0.25`):
            Seconds between two `DRIP_BYTES`-byte pieces of a `"drip"` answer (a 500-byte answer takes ~30 s).
        schedule (`Callable[[int], str]` or `None`, *optional*):
            Mode of the n-th request (n from 1); overrides `mode` when given.
        usage (`tuple[int, int]`, *optional*, defaults to `(100, 20)`):
            `(prompt_tokens, completion_tokens)` reported in every answer.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to listen on.
        port (`int`, *optional*, defaults to `0`):
            Port to listen on (0: any free port).
    """

    def __init__(
        self,
        *,
        answer: str | Callable[[dict], str] = VALID_REFERENCE,
        latency: float = 0.0,
        mode: str = "ok",
        hang: bool = False,
        fail_first: int = 0,
        fail_status: int = 500,
        garbage: bool = False,
        retry_after: float | str | None = 0,
        drip_interval: float = 0.25,
        schedule: Callable[[int], str] | None = None,
        usage: tuple[int, int] = (100, 20),
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        mode = "hang" if hang else "garbage" if garbage else mode
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; choose one of {list(MODES)}.")
        self.answer = answer
        self.latency = latency
        self.mode = mode
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.drip_interval = drip_interval
        self.schedule = schedule
        self.tag = None
        self.usage = usage
        self.host = host
        self.requested_port = port
        self.requests: list[dict] = []
        self.raw_bodies: list[str] = []
        self.request_times: list[float] = []
        self.modes_seen: list[str] = []
        self.tags: list = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeLLMServer:
        self._stopped.clear()
        self._httpd = _Server((self.host, self.requested_port), _Handler)
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
        return f"http://{self.host}:{self.port}/v1"

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
            self.modes_seen.clear()
            self.tags.clear()

    # internals
    def _record(self, raw: str) -> tuple[int, str]:
        with self._lock:
            number = len(self.raw_bodies) + 1
            mode = self.mode if self.schedule is None else self.schedule(number)
            if mode not in MODES:
                raise ValueError(f"schedule({number}) gave mode={mode!r}; choose one of {list(MODES)}.")
            self.raw_bodies.append(raw)
            self.request_times.append(time.monotonic())
            self.modes_seen.append(mode)
            self.tags.append(self.tag)
            try:
                self.requests.append(json.loads(raw))
            except ValueError:
                self.requests.append({})
            return number, mode

    def _completion(self, body: dict, *, huge: bool = False) -> dict:
        content = self.answer(body) if callable(self.answer) else self.answer
        if huge:
            content += "\n" + "x" * HUGE_BYTES
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


def main(argv: list[str] | None = None) -> None:
    """`python -m trl_sgcd.testing.llm_server --port 8000`: serve until Ctrl-C / SIGTERM (prints the base URL)."""
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible server that answers with a credit reference")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (the URL is printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--mode", default="ok", choices=MODES, help="fault to inject (default: none)")
    parser.add_argument("--retry-after", default="0", help="Retry-After header of a 429 answer (seconds)")
    parser.add_argument("--drip-interval", type=float, default=0.25, help="seconds between pieces of a drip answer")
    parser.add_argument("--answer-file", default=None, help="file whose text is every answer (default: a reference)")
    parser.add_argument("--until-stdin-closes", action="store_true", help="stop when stdin closes (for benchmarks)")
    args = parser.parse_args(argv)
    answer = VALID_REFERENCE
    if args.answer_file:
        with open(args.answer_file, encoding="utf-8") as f:
            answer = f.read()
    server = FakeLLMServer(
        answer=answer,
        latency=args.latency,
        mode=args.mode,
        retry_after=args.retry_after,
        drip_interval=args.drip_interval,
        host=args.host,
        port=args.port,
    )
    with server:
        print(server.base_url, flush=True)
        if args.until_stdin_closes:
            sys.stdin.read()
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
