"""The `openai` judge: a VLM (e.g. Qwen2.5-VL-72B) behind any OpenAI-compatible chat-completions endpoint.

One client serves `vllm serve`, SGLang and hosted APIs alike, so the judge that scores a training run is a
deployment choice (`saferl.reward.judge.openai`), not code. What matters for online RL:

- Throughput: a GRPO step waits for every rollout's score, so requests overlap up to `max_concurrency`
  over one keep-alive connection pool, and the per-request client work (prompt, image, JSON) is done once
  per input, not per attempt, to keep the client far below the judge's own latency. An image is encoded
  once for all the inputs that show it (a group's n responses, its reflection checks), off the event loop.
- Faults: a judge endpoint will drop requests, time out, rate-limit and occasionally answer with something
  that is not a verdict. Transient faults are retried with jittered exponential backoff; what is still
  failing afterwards becomes `JudgeVerdict(error=...)` for that sample only, and `rewards.faults` decides
  what the sample gets. A score is never invented here.
- Secrets: the key is read from the environment variable *named* in the config at request time and is
  kept out of the judge's name, repr, logs, errors and verdicts, since all of those end up in W&B.

The transport (pool, semaphore, retries, key handling) is `chat_client.ChatClient`, which SRPO's
adversarial generator shares; this module is what makes a request a judgement: the prompt and the verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from saferl.policies import PolicySet, load_policies

from ..judge import JudgeInput, JudgeVerdict
from ..prompt import VerdictError, build_prompt, parse_verdict
from ..rubric import Rubric
from .chat_client import (
    ChatClient,
    ChatFailure,
    ReplyError,
    encode_image,
    encode_image_async,
    request_body,
)

__all__ = ["OpenAIJudge", "encode_image"]


class OpenAIJudge:
    """Scores trajectories with a chat-completions VLM; see the module docstring for the policies."""

    def __init__(
        self,
        rubric: Rubric,
        base_url: str,
        model: str,
        api_key_env: str = "SAFERL_JUDGE_API_KEY",
        max_concurrency: int = 64,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        image_max_side: int = 768,
        temperature: float = 0.0,
        max_tokens: int = 512,
        json_mode: bool = False,
        policies: PolicySet | None = None,
    ) -> None:
        self.rubric = rubric
        self.model = model
        self.image_max_side = int(image_max_side)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.json_mode = bool(json_mode)
        self.policies = policies or load_policies()
        base = base_url.rstrip("/")
        self.name = f"openai:{model}@{base} rubric-v{rubric.version}"
        self.client = ChatClient(
            base_url, model, api_key_env, max_concurrency, timeout_s, max_retries, backoff_s, name=self.name
        )
        self.base_url = self.endpoint = self.client.base_url
        self.api_key_env = api_key_env  # the NAME of the variable; the key itself is never stored
        self.max_concurrency = self.client.max_concurrency
        self.timeout_s = self.client.timeout_s
        self.max_retries = self.client.max_retries
        self.backoff_s = self.client.backoff_s
        self.stats = self.client.stats  # {"requests", "retries", "failures"}, kept by the client

    @property
    def last_error(self) -> str | None:
        return self.client.last_error

    @classmethod
    def from_config(cls, node: Mapping[str, Any], rubric: Rubric, **overrides: Any) -> OpenAIJudge:
        """From the `saferl.reward.judge.openai` node (a mapping or DictConfig)."""
        return cls(rubric, **{**dict(node), **overrides})

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.name!r}, max_concurrency={self.max_concurrency})"

    async def aclose(self) -> None:
        """Close the connection pool (call from the loop that judged)."""
        await self.client.aclose()

    async def __aenter__(self) -> OpenAIJudge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def judge(self, inputs: list[JudgeInput]) -> list[JudgeVerdict]:
        """One verdict per input, in order; a sample that still fails after retries gets `error` set."""
        if not inputs:
            return []
        return list(await asyncio.gather(*(self._judge_one(item) for item in inputs)))

    def _payload(self, item: JudgeInput, image_url: str | None = None) -> bytes:
        """The request body, serialised once per input and resent as-is on retries; `image_url` is
        `item.image` already encoded (else it is encoded here, through the cache)."""
        prompt = build_prompt(item, self.rubric, self.policies)
        return request_body(
            self.model,
            prompt.system,
            prompt.user,
            item.image,
            self.image_max_side,
            self.temperature,
            self.max_tokens,
            self.json_mode,
            image_url=image_url,
        )

    async def _payload_async(self, item: JudgeInput) -> bytes:
        """`_payload` with the image encoded off the event loop (or taken from the cache): a miss would
        otherwise hold up every request in flight on this loop for the length of a JPEG encode."""
        url = None if item.image is None else await encode_image_async(item.image, self.image_max_side)
        return self._payload(item, image_url=url)

    def _verdict(self, content: str) -> JudgeVerdict:
        try:
            criteria, flags = parse_verdict(content, self.rubric)
        except VerdictError as err:
            raise ReplyError(f"bad verdict: {err}") from None
        return JudgeVerdict(criteria=criteria, flags=flags, raw=self.client.redact(content))

    async def _judge_one(self, item: JudgeInput) -> JudgeVerdict:
        try:
            return await self.client.complete(lambda: self._payload_async(item), self._verdict, str(item.id))
        except ChatFailure as err:
            return JudgeVerdict(error=str(err))
