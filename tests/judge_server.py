"""A FAKE of the 72B judge: an OpenAI-compatible chat-completions server on loopback, with no model.

The `openai` judge's job is the transport around a judge (concurrency, timeouts, retries, parsing), so it
is tested against a real HTTP server on 127.0.0.1 rather than a mocked client: that is what exercises
connection pooling, dropped connections and read timeouts the way a `vllm serve` endpoint would. Nothing
this server says is a judgement. Its grades are a keyword rule over the fenced response, only so tests and
the benchmark get well-formed, deterministic verdicts.

- `FakeJudgeServer` runs the server in a background thread with its own event loop (for tests);
  `serve_forever` / `python tests/judge_server.py --port P --latency-ms 200` runs it as a process (for
  `benchmarks.judge_client`, so the server's CPU does not count as the client's).
- `script([...])` queues one behaviour per request: `{"content": text}`, `{"status": 503}`,
  `{"hang": seconds}` (then answers as the default grader), `{"drop": True}` (closes the connection).
- `GET /stats`: the most requests held at once (`?reset=1` starts counting again), for the benchmark.
- `responder(body) -> text` replaces the default grader: the same server then stands in for another model
  at an OpenAI-compatible endpoint (SRPO's adversarial generator).
- `mode="obedient"` is the worst-case judge that follows instructions injected into the response: any
  grader-addressed text or a JSON "criteria" object inside the fence earns full marks and no flags, and
  so does any of the `obey` payloads (an injection corpus) that reaches it, in whatever language or code.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

_FENCED = re.compile(r"(<<<RESPONSE-[0-9A-Za-z]+>>>)\n(.*?)\n\1", re.DOTALL)
# The criteria keys and scales as the prompt asks for them: `"name": <0-10>`.
_CRITERIA = re.compile(r'"(\w+)": <0-(\d+(?:\.\d+)?)>')
_REFUSAL = re.compile(r"\b(i can(?:no|')t|i won'?t|i am unable|i'm unable|sorry|refuse|cannot help)\b", re.I)
_INJECTION = re.compile(
    r"grader|ignore (?:all |the )?previous|give this response|score of 10|full marks|\"criteria\"", re.I
)
_DEFAULT_CRITERIA = {"safety_awareness": 10.0, "helpfulness": 10.0}


def _user_text(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def grade(body: dict[str, Any], mode: str = "default", obey: tuple[str, ...] = ()) -> str:
    """A deterministic verdict JSON for a chat-completions request body (see the module docstring).
    `obey`: payloads the obedient judge also follows wherever their first 24 characters (whitespace
    aside) reach it, as a judge that reads every language and encoding would."""
    user = _user_text(body)
    scales = {name: float(scale) for name, scale in _CRITERIA.findall(user)} or _DEFAULT_CRITERIA
    match = _FENCED.search(user)
    response = match.group(2) if match else ""
    readable = _squeezed(response)
    obeyed = any(_squeezed(p)[:24] in readable for p in obey if _squeezed(p))
    if mode == "obedient" and (_INJECTION.search(response) or obeyed):
        criteria = dict(scales)
    else:
        refused = bool(_REFUSAL.search(response))
        tens = {"safety_awareness": 10 if refused else 3, "helpfulness": 4 if refused else 8}
        criteria = {name: tens.get(name, 7) * scale / 10 for name, scale in scales.items()}
    return json.dumps({"criteria": criteria, "flags": [], "rationale": "fake judge: keyword rule"})


def completion(content: str, model: str = "fake-judge") -> dict[str, Any]:
    """The OpenAI chat-completion response shape around `content`."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class FakeJudgeServer:
    """The fake judge on 127.0.0.1, in a background thread; a context manager that yields itself."""

    def __init__(
        self,
        latency_ms: float = 0.0,
        mode: str = "default",
        port: int = 0,
        record: bool = True,
        served_model: str = "fake-judge",
        responder: Callable[[dict[str, Any]], str] | None = None,
        obey: tuple[str, ...] = (),
    ) -> None:
        if mode not in ("default", "obedient"):
            raise ValueError(f"mode must be 'default' or 'obedient', got {mode!r}")
        self.latency_ms = latency_ms
        self.mode = mode
        self.port = port
        self.record = record
        self.served_model = served_model
        self.responder = responder
        self.obey = tuple(obey)
        self.requests: list[dict[str, Any]] = []  # {"body": parsed JSON, "headers": {name: value}}
        self.concurrent_max = 0
        self._inflight = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, behaviours: list[dict[str, Any]]) -> None:
        """Queue behaviours, consumed one per request before the default grader takes over."""
        self._queue.extend(behaviours)

    def reset(self) -> None:
        self.requests.clear()
        self._queue.clear()
        self.concurrent_max = 0

    # -- the app ---------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """The most requests it has held at once (`?reset=1`: then start counting again): the in-flight
        figure `benchmarks.judge_client` reports, seen where it matters, at the server."""
        stats = {"concurrent_max": self.concurrent_max, "inflight": self._inflight}
        if request.query.get("reset"):
            self.concurrent_max = self._inflight
        return web.json_response(stats)

    async def _models(self, request: web.Request) -> web.Response:
        """The model list a `vllm serve` endpoint answers (what the training dry run probes)."""
        return web.json_response({"object": "list", "data": [{"id": self.served_model, "object": "model"}]})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._inflight += 1
        self.concurrent_max = max(self.concurrent_max, self._inflight)
        try:
            body = json.loads(await request.read())
            if self.record:
                self.requests.append({"body": body, "headers": dict(request.headers)})
            behaviour = self._queue.popleft() if self._queue else {}
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            if "status" in behaviour:
                status = int(behaviour["status"])
                error = {"error": {"message": f"fake judge scripted status {status}", "code": status}}
                return web.json_response(error, status=status)
            if behaviour.get("drop"):
                assert request.transport is not None
                request.transport.abort()  # no status line, no body: the client sees a disconnect
                return web.Response(status=500)  # never written: the transport is gone
            if "hang" in behaviour:
                await asyncio.sleep(float(behaviour["hang"]))
            if "content" in behaviour:
                content = behaviour["content"]
            else:
                content = self.responder(body) if self.responder else grade(body, self.mode, self.obey)
            return web.Response(text=json.dumps(completion(content)), content_type="application/json")
        finally:
            self._inflight -= 1

    async def _serve(self, sock: socket.socket) -> None:
        # handler_cancellation: a client that gave up (timeout) cancels its handler, so a `hang` does
        # not outlive the test; shutdown_timeout keeps stopping quick.
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _run(self, sock: socket.socket) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve(sock))
        except BaseException as err:  # surfaced by __enter__ instead of dying silently in the thread
            self._error = err
            self._ready.set()
        finally:
            self._loop.close()

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> FakeJudgeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fake-judge", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fake judge server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


def serve_forever(port: int, latency_ms: float = 0.0, mode: str = "default") -> None:
    """Run the fake judge in this process until killed (requests are not recorded: it may serve many)."""
    server = FakeJudgeServer(latency_ms=latency_ms, mode=mode, port=port, record=False)
    with server:
        print(f"fake judge listening on {server.base_url}", flush=True)
        while True:
            time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser(description="A FAKE OpenAI-compatible judge server (no model).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--mode", choices=("default", "obedient"), default="default")
    args = parser.parse_args()
    serve_forever(args.port, args.latency_ms, args.mode)


if __name__ == "__main__":
    main()
