"""The transport to an OpenAI-compatible chat-completions endpoint, shared by the `openai` judge and SRPO's
adversarial generator (saferl/srpo/adversarial.py): one place that knows keys, concurrency and retries.

- Concurrency: requests overlap up to `max_concurrency` over one keep-alive connection pool; the caller's
  request body is built once, under the semaphore, and resent as-is on retries.
- Faults: transient ones (a dropped connection, a timeout, 5xx, 429, and a reply the caller's `parse`
  rejects with `ReplyError`) are retried with jittered exponential backoff; what still fails raises
  `ChatFailure` with a short cause, counted in `stats` and kept as `last_error`. Nothing is invented.
- Secrets: the key is read from the environment variable *named* by `api_key_env` at request time and is
  scrubbed (`redact`) from every message this module raises or logs, since those end up in W&B.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from PIL import Image

log = logging.getLogger(__name__)

T = TypeVar("T")
DETAIL_CHARS = 160  # error details are truncated: they are for a log line and a W&B cell, not a dump


def encode_image(data: bytes, max_side: int) -> str:
    """An image as a `data:` URL the way VLM servers take it: RGB JPEG (quality 90), longer side <= max_side.

    Downscaling bounds the endpoint's visual tokens (and so its latency and cost) whatever size the
    dataset's images are; the aspect ratio is kept and small images are never upscaled.
    """
    with Image.open(io.BytesIO(data)) as img:
        if max(img.size) > max_side:
            img.draft("RGB", (max_side, max_side))  # JPEG sources: decode at a reduced scale (cheap)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent -> white, not black
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = img.convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_body(
    model: str,
    system: str,
    user: str,
    image: bytes | None,
    image_max_side: int,
    temperature: float,
    max_tokens: int,
    json_mode: bool = False,
) -> bytes:
    """A chat-completions request: a system turn, then the image (if any) and the user text in one turn."""
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": encode_image(image, image_max_side)}})
    content.append({"type": "text", "text": user})
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}],
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class ReplyError(Exception):
    """Raised by a caller's `parse`: the reply is not what was asked for. Retried, since a sampled model
    may well answer properly the next time."""


class ChatFailure(Exception):
    """A request that failed for good (after its retries, or at once when retrying cannot help); the
    message is short and holds no key."""


class _Retryable(Exception):
    """A failed attempt worth repeating (server down, timeout, 5xx, 429, a rejected reply)."""


class _Fatal(Exception):
    """A failed attempt that would fail the same way again (4xx other than 429, a bad input)."""


class ChatClient:
    """Bounded, retried chat completions against one endpoint; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        max_concurrency: int = 64,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        name: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if httpx.URL(base_url).scheme not in ("http", "https"):
            raise ValueError(
                f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env  # the NAME of the variable; the key itself is never stored
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.name = name or f"{model}@{self.base_url}"
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "failures": 0}
        self.last_error: str | None = None
        self._url = f"{self.base_url}/chat/completions"
        # The client and semaphore belong to one event loop; they are made in the first loop that sends
        # and remade if a caller later sends from a different loop (e.g. one `asyncio.run` per step).
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._gate: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.name!r}, max_concurrency={self.max_concurrency})"

    # -- lifecycle ------------------------------------------------------------------------------------

    def _ensure_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            # A client left from a finished loop cannot be closed from here; its sockets go with it.
            limits = httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            )
            self._client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(self.timeout_s))
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._gate = asyncio.Lock()
            self._loop = loop
        assert self._sem is not None
        return self._client, self._sem

    async def aclose(self) -> None:
        """Close the connection pool (call from the loop that sent)."""
        client, self._client, self._sem, self._gate, self._loop = self._client, None, None, None, None
        if client is not None and not client.is_closed:
            await client.aclose()

    # -- requests -------------------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def redact(self, text: str) -> str:
        """Remove the key from anything that may be logged (a server may echo a bad key back)."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key and key in text else text

    async def complete(self, build: Callable[[], bytes], parse: Callable[[str], T], label: str) -> T:
        """`parse(reply text)` for the request body `build()` makes; `ChatFailure` when it cannot be had.

        `build` runs once, on the first attempt and under the semaphore: building every body of a big
        batch up front would leave the endpoint idle that long before the first request. An exception from
        it is a bad input (not retried); `ReplyError` from `parse` is retried like a transient fault.
        """
        client, sem = self._ensure_client()
        payload: bytes | None = None
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                log.debug("%s retry %d for %s in %.2fs after: %s", self.name, attempt, label, delay, error)
                await asyncio.sleep(delay)
            try:
                async with sem:
                    if payload is None:
                        payload = self._build_or_fail(build)
                    content = await self._attempt(client, payload)
                return parse(content)
            except ReplyError as err:
                error = self.redact(str(err))
            except _Retryable as err:
                error = self.redact(str(err))
            except _Fatal as err:
                raise self._fail(label, str(err)) from None
        raise self._fail(label, error) from None

    def _build_or_fail(self, build: Callable[[], bytes]) -> bytes:
        try:
            return build()
        except Exception as err:  # an unreadable image, say: retrying would not help
            raise _Fatal(f"bad input: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None

    async def _post(self, client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
        """`client.post`, letting one request at a time into the connection pool.

        httpcore (1.0.x) assigns every request queued in one pass to the *same* first idle connection;
        all but one then fail over and re-queue, so a burst of k requests (a wave of responses arriving
        together frees k slots) costs O(k^2) pool passes. At concurrency 64 that stalled the second wave
        by ~0.4 s and cost ~10% of throughput. The gate is released at the request's first trace event,
        when it owns a connection (a new one connecting, or an idle one it has marked active); the
        semaphore keeps a connection free for every gate holder, so it is held only briefly.
        """
        gate = self._gate
        assert gate is not None
        await gate.acquire()
        held = True

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        try:
            return await client.post(
                self._url, content=payload, headers=self.headers(), extensions={"trace": trace}
            )
        finally:
            if held:
                held = False
                gate.release()

    async def _attempt(self, client: httpx.AsyncClient, payload: bytes) -> str:
        """One POST; the answer's text, or `_Retryable` / `_Fatal` with a short cause."""
        self.stats["requests"] += 1
        try:
            resp = await self._post(client, payload)
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout after {self.timeout_s:g}s ({type(err).__name__})") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection failed: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None
        except httpx.HTTPError as err:  # e.g. a body that fails to decode
            raise _Retryable(f"request failed: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None
        if resp.status_code != 200:
            detail = resp.text.strip().replace("\n", " ")
            message = f"http {resp.status_code}: {detail}"[:DETAIL_CHARS]
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Retryable(message)
            raise _Fatal(message)
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError) as err:
            raise _Retryable(f"bad response: not a chat completion ({type(err).__name__})") from None
        return content if isinstance(content, str) else ""

    def _fail(self, label: str, error: str) -> ChatFailure:
        error = self.redact(error)
        self.stats["failures"] += 1
        self.last_error = error
        log.warning("%s failed on %s: %s", self.name, label, error)
        return ChatFailure(error)
