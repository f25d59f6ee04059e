"""The transport to an OpenAI-compatible chat-completions endpoint, shared by the `openai` judge and SRPO's
adversarial generator (saferl/srpo/adversarial.py): one place that knows keys, concurrency and retries.

- Concurrency: requests overlap up to `max_concurrency` over one keep-alive aiohttp connection pool per
  event loop; the caller's request body is built once, under the semaphore, and resent as-is on retries.
  aiohttp, not httpx: httpcore 1.0.x rescans its whole pool for every queued request
  (`_assign_requests_to_connections`, encode/httpx#3215), so its cost per request grew with the
  concurrency; at 256 in flight it took 12-16 s of a ~20-30 s benchmark run and the client reached
  ~0.1x the ideal rate, where a plain thread pool reached 0.3x-0.8x.
- Images: a `data:` URL is made once per (image, max_side) and kept in a small LRU (`encode_image`), so the
  n responses of a GRPO group and its reflection checks reuse it; `encode_image_async` does the encoding
  on a worker thread (PIL drops the GIL), so it does not stall the event loop the requests share.
- Faults: transient ones (a dropped connection, a timeout, 5xx, 429, and a reply the caller's `parse`
  rejects with `ReplyError`) are retried with jittered exponential backoff; what still fails raises
  `ChatFailure` with a short cause, counted in `stats` and kept as `last_error`. Nothing is invented.
- Secrets: the key is read from the environment variable *named* by `api_key_env` at request time and is
  scrubbed (`redact`) from every message this module raises or logs, since those end up in W&B.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import inspect
import io
import json
import logging
import os
import random
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
from PIL import Image

log = logging.getLogger(__name__)

T = TypeVar("T")
DETAIL_CHARS = 160  # error details are truncated: they are for a log line and a W&B cell, not a dump
# Idle keep-alive connections are dropped after this long: below uvicorn's (so vLLM's and SGLang's) 5 s,
# so the client usually lets go of an idle connection before the server closes it under a new request
# (that request would fail and wait out a backoff).
KEEPALIVE_S = 4.0


# -- images ---------------------------------------------------------------------------------------------


def _encode_jpeg(data: bytes, max_side: int) -> str:
    """The uncached encoding behind `encode_image`."""
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


class ImageCache:
    """Data URLs by (image bytes, max_side), least recently used first out, bounded in entries and bytes.

    Keyed by the bytes themselves rather than a digest: Python caches a bytes object's hash, so where the
    n rows of a group share one object (a repeated batch does) a hit is a dict lookup, not a pass over
    the image, and equal bytes from different objects still hit. The bytes
    kept count against `max_bytes` with the URL. Thread-safe: the sync path encodes on the caller's
    thread, the async one on `encode_image_async`'s workers. `stats` counts hits and real encodings.
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 1024**2) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.stats: dict[str, int] = {"hits": 0, "encodes": 0}
        self._urls: collections.OrderedDict[tuple[bytes, int], str] = collections.OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[bytes, int], Future[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._urls)

    def get(self, data: bytes, max_side: int) -> str | None:
        key = (data, max_side)
        with self._lock:
            url = self._urls.get(key)
            if url is not None:
                self._urls.move_to_end(key)
                self.stats["hits"] += 1
            return url

    def put(self, data: bytes, max_side: int, url: str) -> None:
        key = (data, max_side)
        size = len(data) + len(url)
        if size > self.max_bytes:
            return  # bigger than the whole budget: encoded every time rather than evicting everything
        with self._lock:
            old = self._urls.pop(key, None)
            if old is not None:
                self._bytes -= len(data) + len(old)
            self._urls[key] = url
            self._bytes += size
            while len(self._urls) > self.max_entries or self._bytes > self.max_bytes:
                (old_data, _), old_url = self._urls.popitem(last=False)
                self._bytes -= len(old_data) + len(old_url)

    def clear(self) -> None:
        with self._lock:
            self._urls.clear()
            self._bytes = 0
            self.stats = {"hits": 0, "encodes": 0}

    def encode(self, data: bytes, max_side: int) -> str:
        """The cached URL, or encode it here and keep it."""
        url = self.get(data, max_side)
        if url is None:
            url = _encode_jpeg(data, max_side)
            with self._lock:
                self.stats["encodes"] += 1
            self.put(data, max_side, url)
        return url

    async def aencode(self, data: bytes, max_side: int) -> str:
        """`encode` without blocking the running event loop: a hit returns at once; a miss is encoded
        on a worker thread, and concurrent asks for one image (a group's n responses arrive together)
        share that one job."""
        url = self.get(data, max_side)
        if url is not None:
            return url
        key = (data, max_side)
        with self._lock:
            job = self._pending.get(key)
            if job is None:
                job = _image_workers().submit(self._encode_job, data, max_side)
                self._pending[key] = job
        return await asyncio.wrap_future(job)

    def _encode_job(self, data: bytes, max_side: int) -> str:
        try:
            return self.encode(data, max_side)
        finally:
            with self._lock:
                self._pending.pop((data, max_side), None)


IMAGE_CACHE = ImageCache()
_workers: ThreadPoolExecutor | None = None
_workers_lock = threading.Lock()


def _image_workers() -> ThreadPoolExecutor:
    """A few threads for image encoding, made on first use. A pool of its own, not the loop's default
    executor: that one is shut down with each `asyncio.run`, while a pending encoding may be shared
    across loops through the cache."""
    global _workers
    with _workers_lock:
        if _workers is None:
            _workers = ThreadPoolExecutor(
                max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="saferl-image"
            )
        return _workers


def encode_image(data: bytes, max_side: int) -> str:
    """An image as a `data:` URL the way VLM servers take it: RGB JPEG (quality 90), longer side <= max_side.

    Downscaling bounds the endpoint's visual tokens (and so its latency and cost) whatever size the
    dataset's images are; the aspect ratio is kept and small images are never upscaled. The URL is
    cached (`IMAGE_CACHE`), so asking again for the same image costs a lookup.
    """
    return IMAGE_CACHE.encode(data, max_side)


async def encode_image_async(data: bytes, max_side: int) -> str:
    """`encode_image` without blocking the running event loop: a hit returns at once, a miss is
    encoded on a worker thread while the loop keeps serving the requests in flight."""
    return await IMAGE_CACHE.aencode(data, max_side)


# -- request bodies ---------------------------------------------------------------------------------------


def request_body(
    model: str,
    system: str,
    user: str,
    image: bytes | None,
    image_max_side: int,
    temperature: float,
    max_tokens: int,
    json_mode: bool = False,
    image_url: str | None = None,
) -> bytes:
    """A chat-completions request: a system turn, then the image (if any) and the user text in one turn.

    `image_url`: `image` already encoded (`encode_image_async`), so it is not looked up again here.
    """
    content: list[dict[str, Any]] = []
    if image_url is None and image is not None:
        image_url = encode_image(image, image_max_side)
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
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


def _env_proxy(url: str) -> str | None:
    """The proxy the environment (`HTTP(S)_PROXY`, `NO_PROXY`) names for `url`, as httpx honoured it.

    Resolved once per session rather than by aiohttp's `trust_env`, which re-reads the environment and
    ~/.netrc (on an executor thread) for every request."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def _ssl_context(url: str) -> ssl.SSLContext | bool:
    """The CA store httpx verified https endpoints against: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set,
    else certifi's bundle (so a slim image without system CA certificates still reaches a hosted API);
    the system store only where certifi is missing."""
    if urllib.parse.urlsplit(url).scheme != "https":
        return True  # unused for http; aiohttp's default
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not (cafile or capath):
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            return True
    return ssl.create_default_context(cafile=cafile, capath=capath)


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
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
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
        # The session and semaphore belong to one event loop; they are made in the first loop that sends
        # and remade if a caller later sends from a different loop (e.g. one `asyncio.run` per step).
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: str | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.name!r}, max_concurrency={self.max_concurrency})"

    # -- lifecycle ------------------------------------------------------------------------------------

    async def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        stale, stale_loop = self._session, self._loop
        if stale is None or stale_loop is not loop or stale.closed:
            # limit = max_concurrency: the semaphore never lets more requests in, so no request waits
            # for a connection; keep-alive reuses them across waves.
            connector = aiohttp.TCPConnector(
                limit=self.max_concurrency, keepalive_timeout=KEEPALIVE_S, ssl=_ssl_context(self._url)
            )
            # Per-phase limits, as httpx's Timeout(timeout_s) had: connecting, and the wait for each
            # read (a judge that goes silent mid-answer); no cap on a long answer that keeps coming.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.timeout_s, sock_connect=self.timeout_s, sock_read=self.timeout_s
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
            self._proxy = _env_proxy(self._url)
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
            if stale is not None and stale_loop is not None and stale_loop.is_closed():
                # Left by a finished loop: closing it only marks it closed (its transports went with
                # that loop), which keeps aiohttp from reporting an unclosed session when it is freed.
                # After the new session is in place, so no other request sees the stale one meanwhile.
                await stale.close()
        assert self._session is not None and self._sem is not None
        return self._session, self._sem

    async def aclose(self) -> None:
        """Close the connection pool (call from the loop that sent)."""
        session, self._session, self._sem, self._loop = self._session, None, None, None
        if session is not None and not session.closed:
            await session.close()

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

    async def complete(
        self, build: Callable[[], bytes | Awaitable[bytes]], parse: Callable[[str], T], label: str
    ) -> T:
        """`parse(reply text)` for the request body `build()` makes; `ChatFailure` when it cannot be had.

        `build` runs once, on the first attempt and under the semaphore: building every body of a big
        batch up front would leave the endpoint idle that long before the first request. It may return
        the body or an awaitable of it (e.g. one that encodes its image off the loop first). An exception
        from it is a bad input (not retried); `ReplyError` from `parse` is retried like a transient fault.
        """
        session, sem = await self._ensure_session()
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
                        payload = await self._build_or_fail(build)
                    content = await self._attempt(session, payload)
                return parse(content)
            except ReplyError as err:
                error = self.redact(str(err))
            except _Retryable as err:
                error = self.redact(str(err))
            except _Fatal as err:
                raise self._fail(label, str(err)) from None
        raise self._fail(label, error) from None

    async def _build_or_fail(self, build: Callable[[], bytes | Awaitable[bytes]]) -> bytes:
        try:
            body = build()
            return await body if inspect.isawaitable(body) else body
        except Exception as err:  # an unreadable image, say: retrying would not help
            raise _Fatal(f"bad input: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None

    async def _attempt(self, session: aiohttp.ClientSession, payload: bytes) -> str:
        """One POST; the answer's text, or `_Retryable` / `_Fatal` with a short cause."""
        self.stats["requests"] += 1
        try:
            # No redirects followed, as with httpx: a 3xx is an answer (`http 307: ...`), not a new URL.
            async with session.post(
                self._url, data=payload, headers=self.headers(), proxy=self._proxy, allow_redirects=False
            ) as resp:
                status = resp.status
                body = await resp.read()
        except asyncio.TimeoutError as err:  # aiohttp's ServerTimeoutError too: before ClientConnectionError
            raise _Retryable(f"timeout after {self.timeout_s:g}s ({type(err).__name__})") from None
        except (aiohttp.ClientConnectionError, OSError) as err:
            raise _Retryable(f"connection failed: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None
        except aiohttp.ClientError as err:  # e.g. a malformed response
            raise _Retryable(f"request failed: {type(err).__name__}: {err}"[:DETAIL_CHARS]) from None
        if status != 200:
            detail = body.decode("utf-8", "replace").strip().replace("\n", " ")
            message = f"http {status}: {detail}"[:DETAIL_CHARS]
            if status >= 500 or status == 429:
                raise _Retryable(message)
            raise _Fatal(message)
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError) as err:
            raise _Retryable(f"bad response: not a chat completion ({type(err).__name__})") from None
        return content if isinstance(content, str) else ""

    def _fail(self, label: str, error: str) -> ChatFailure:
        error = self.redact(error)
        self.stats["failures"] += 1
        self.last_error = error
        log.warning("%s failed on %s: %s", self.name, label, error)
        return ChatFailure(error)
