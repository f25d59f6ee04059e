"""A batching Hugging Face `generate` server with verl's rollout-server contract, for CPU rollouts.

verl's agent loops talk to rollout servers through `generate(prompt_ids, sampling_params, image_data)
-> TokenOutput`, and verl only ships vLLM and SGLang servers, neither of which runs here. This class
offers the same contract on top of `transformers`, so the whole rollout path (agent loop, multi-turn
reflection, rewards) runs on a laptop or a CPU CI box with the tiny model, and unchanged on a real one.

Why the pieces look the way they do:

* A Ray actor wraps this class (`rollout.server_manager`), but it stays a plain class with `async`
  methods so tests can drive it with `asyncio.run`, no cluster needed.
* Agent loops fire many requests at once. Running one `model.generate` per request wastes the machine:
  on CPU a decode step costs mostly Python overhead, the same for 1 row as for 8. So requests are queued
  and a background task merges those that arrive within `batch_wait_ms` (and share sampling settings
  that `generate` takes batch-wide) into ONE left-padded `generate` call. It runs on a dedicated worker
  thread so the event loop keeps accepting requests while a batch decodes; the next batch then picks up
  everything that arrived meanwhile.
* Sampling is done by our own logits processor with one `torch.Generator` per row, because `generate`
  samples with the global RNG. That makes a seeded request reproducible whatever it is batched with, so
  seeded requests need no batch of their own.
* `log_probs` come from the logits (`output_logits=True`) divided by the sampling temperature, before
  repetition penalty and top-p/top-k: that is what the trainer's teacher-forced forward pass recomputes
  (verl's FSDP engine scales its logits by `rollout.temperature`, `workers/engine/fsdp/transformer_impl.py`
  `_scale_logits_by_temperature`), so rollout and training log probs agree at any temperature (tests check
  this to 1e-4 at 1.0 and 0.7). vLLM's `processed_logprobs`, verl's default, also renormalise after top-k/p;
  with top-k/p off, as in every shipped experiment, the two agree. Greedy requests report the raw logits'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria
from verl.workers.rollout.replica import TokenOutput

from saferl.models.checkpoint import load_vlm

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
# While requests keep arriving less than `batch_wait_ms` apart, the batch window stays open, up to this
# many windows after the oldest request arrived (bounded latency, full batches during bursts).
BURST_WAIT_FACTOR = 4


# ---------------------------------------------------------------------------------------------------
# Sampling parameters
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchKey:
    """The settings `generate` applies to a whole batch: requests batch together only if these match."""

    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    min_tokens: int
    repetition_penalty: float
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SamplingSpec:
    """One request's sampling settings, normalised from verl's (vLLM-style) `sampling_params` dict."""

    key: BatchKey
    seed: int | None


def parse_sampling_params(params: dict[str, Any] | None, default_max_tokens: int) -> SamplingSpec:
    """Validate and normalise `sampling_params`; raises ValueError with the offending key."""
    params = dict(params or {})
    n = int(params.get("n", 1) or 1)
    if n != 1:
        raise ValueError(
            f"sampling_params n={n} is not supported: HFGenerationServer returns one sequence per "
            "generate call (verl's agent loop repeats each prompt itself; set rollout.n there)"
        )
    temperature = float(params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0)
    top_p = float(params.get("top_p", 1.0) if params.get("top_p") is not None else 1.0)
    top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
    max_tokens = _first_set(params, ("max_tokens", "max_new_tokens"), default_max_tokens)
    min_tokens = _first_set(params, ("min_tokens", "min_new_tokens"), 0)
    repetition_penalty = float(params.get("repetition_penalty") or 1.0)
    if temperature < 0:
        raise ValueError(f"sampling_params temperature={temperature} must be >= 0 (0 means greedy)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling_params top_p={top_p} must be in (0, 1]")
    if int(max_tokens) < 1:
        raise ValueError(f"sampling_params max_tokens={max_tokens} must be >= 1")
    if repetition_penalty <= 0:
        raise ValueError(f"sampling_params repetition_penalty={repetition_penalty} must be > 0")
    greedy = temperature == 0.0
    key = BatchKey(
        greedy=greedy,
        # Greedy ignores the sampling knobs: normalise them so all greedy requests batch together.
        temperature=0.0 if greedy else temperature,
        top_p=1.0 if greedy else top_p,
        top_k=-1 if greedy or top_k <= 0 else top_k,
        max_tokens=int(max_tokens),
        min_tokens=min(int(min_tokens), int(max_tokens)),
        repetition_penalty=repetition_penalty,
        stop=_as_str_tuple(params.get("stop")),
        stop_token_ids=tuple(sorted({int(t) for t in params.get("stop_token_ids") or ()})),
    )
    seed = params.get("seed")
    return SamplingSpec(key=key, seed=None if seed is None else int(seed))


def _first_set(params: dict[str, Any], names: Sequence[str], default: int) -> int:
    for name in names:
        if params.get(name) is not None:
            return int(params[name])
    return default


def _as_str_tuple(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if not stop:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(sorted({s for s in stop if s}))


# ---------------------------------------------------------------------------------------------------
# Per-row sampling and stop-string bookkeeping (plugged into `generate`)
# ---------------------------------------------------------------------------------------------------


class RowSampler(LogitsProcessor):
    """Samples each row with its own generator and returns a one-hot score (0 on the pick, -inf
    elsewhere), so `generate(do_sample=False)`'s argmax takes exactly that token.

    Warping follows transformers' order and semantics: temperature, then top-k, then top-p. It runs
    after `generate`'s own processors (repetition penalty, min-new-tokens), which see the raw logits.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_k: int, top_p: float):
        self.generators = generators
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_k > 0 and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        probs = torch.softmax(scores, dim=-1)
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(cdf.device)
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1)).clamp_(max=scores.shape[-1] - 1)
        # Never land on a zero-probability token through float round-off at the top of the CDF.
        zero = probs.gather(-1, picks) <= 0
        if zero.any():
            picks = torch.where(zero, probs.argmax(dim=-1, keepdim=True), picks)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picks, 0.0)


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


class RecordingStopStrings(StoppingCriteria):
    """`generate(stop_strings=...)`'s criterion, also recording how many new tokens each row had when
    its stop string completed, so the response can be cut right after that token."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str], prompt_len: int, batch_size: int):
        self.inner = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))
        self.prompt_len = prompt_len
        self.stopped_at: list[int | None] = [None] * batch_size

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = self.inner(input_ids, scores, **kwargs)
        n_new = input_ids.shape[1] - self.prompt_len
        for row in torch.nonzero(done).flatten().tolist():
            if self.stopped_at[row] is None:
                self.stopped_at[row] = n_new
        return done


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    prompt_ids: list[int]
    spec: SamplingSpec
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    future: asyncio.Future
    arrived: float


@dataclass
class _Stats:
    requests: int = 0
    batches: int = 0
    generated_tokens: int = 0
    generate_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


class HFGenerationServer:
    """Hosts one `transformers` VLM and serves verl-style `generate` calls, batching concurrent ones."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        dtype: Any = None,
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        torch_threads: int = 1,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.torch_threads = int(torch_threads)
        torch.set_num_threads(self.torch_threads)
        self.processor, self.model = load_vlm(model_path, dtype=dtype, device=device)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.device = torch.device(device)
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_s = float(batch_wait_ms) / 1000.0
        self.default_max_tokens = int(default_max_tokens)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = _pad_id(self.tokenizer, self.eos_ids)
        self.image_token_id = getattr(self.model.config, "image_token_id", None)
        self.placeholder_ids = _placeholder_ids(self.model.config)
        self.merge_size = int(getattr(self.processor.image_processor, "merge_size", 1) or 1)
        # One worker thread: batches run one after another, and torch's thread count is set in the
        # thread that runs them (OpenMP's setting is per thread).
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hf-generate",
            initializer=torch.set_num_threads,
            initargs=(self.torch_threads,),
        )
        self._pending: list[_Request] = []
        self._arrived: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._stats = _Stats()
        self.weights_version = 0

    # -- public API ---------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """For the manager to wait on: returns once the model is loaded (i.e. `__init__` finished)."""
        return True

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], image_data: list | None = None
    ) -> TokenOutput:
        """Generate one response to `prompt_ids` (with `<|image_pad|>` already expanded)."""
        spec = parse_sampling_params(sampling_params, self.default_max_tokens)
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        pixel_values, grid_thw = self._process_images(prompt_ids, image_data)
        loop = asyncio.get_running_loop()
        self._ensure_batcher(loop)
        request = _Request(prompt_ids, spec, pixel_values, grid_thw, loop.create_future(), loop.time())
        self._pending.append(request)
        self._arrived.set()
        output = await request.future
        # verl's trainer reads the weight version each output was sampled with (its staleness metrics,
        # trainer_base.py:1897, via llm_server.py:158-162): part of the server contract, as vLLM's.
        output.extra_fields["global_steps"] = self.weights_version
        return output

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Load the trainer's new policy weights (the hf rollout backend calls this after every update).

        Runs on the generation thread, so it can never interleave with a batch in flight: requests
        queued before the update decode with the old weights, later ones with the new. Returns the
        version now served, which the trainer checks, so a server that missed an update is caught."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_state_dict, state_dict)
        self.weights_version = int(version)
        return self.weights_version

    def _load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.model.load_state_dict(state_dict, strict=True)

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "pid": os.getpid(),
            "requests": s.requests,
            "batches": s.batches,
            "mean_batch_size": (sum(s.batch_sizes) / len(s.batch_sizes)) if s.batch_sizes else 0.0,
            "max_batch_size_seen": max(s.batch_sizes, default=0),
            "generated_tokens": s.generated_tokens,
            "generate_s": round(s.generate_s, 4),
            # CPU seconds of the whole process (all threads: generate, event loop, Ray's own threads):
            # with `cpu_s` growing faster than wall time, this actor is using more than one core.
            "cpu_s": round(time.process_time(), 4),
            "pending": len(self._pending),
            "torch_threads": self.torch_threads,
        }

    # -- request preparation ------------------------------------------------------------------------

    def _process_images(
        self, prompt_ids: list[int], image_data: list | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-request image features, checked against the prompt's image tokens so a bad request fails
        alone instead of failing the batch it would have joined."""
        n_image_tokens = prompt_ids.count(self.image_token_id) if self.image_token_id is not None else 0
        if not image_data:
            if n_image_tokens:
                raise ValueError(f"prompt_ids hold {n_image_tokens} image tokens but image_data is empty")
            return None, None
        # Arrays arrive read-only from Ray's zero-copy buffers; torch warns on those, so copy (cheap).
        images = [
            img.copy() if isinstance(img, np.ndarray) and not img.flags.writeable else img
            for img in image_data
        ]
        kwargs: dict[str, Any] = {}
        if all(isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[-1] == 3 for img in images):
            kwargs["input_data_format"] = "channels_last"  # as sent by the manager; no shape guessing
        out = self.processor.image_processor(images=images, return_tensors="pt", **kwargs)
        grid = out["image_grid_thw"]
        expected = int(grid.prod(dim=-1).sum()) // (self.merge_size**2)
        if expected != n_image_tokens:
            raise ValueError(
                f"prompt_ids hold {n_image_tokens} image tokens but the {len(image_data)} image(s) need "
                f"{expected}: expand the prompt with the same processor settings as this server"
            )
        return out["pixel_values"], grid

    # -- batching loop ------------------------------------------------------------------------------

    def _ensure_batcher(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._batcher is not None and not self._batcher.done():
            return
        if self._batcher is not None and not self._batcher.cancelled() and self._batcher.exception():
            logger.error("batcher task died, restarting: %r", self._batcher.exception())
        self._arrived = asyncio.Event()
        self._batcher = loop.create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch()
            batch = self._take_batch()
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_batch, batch
                )
            except Exception as err:  # a failed batch fails its requests, never the server
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(err)
                continue
            for req, result in zip(batch, results, strict=True):
                if not req.future.done():  # the caller may have been cancelled meanwhile
                    req.future.set_result(result)

    async def _wait_for_batch(self) -> None:
        """Hold the window open while a burst keeps arriving: until the oldest request's batch is full,
        or no request came for `batch_wait_ms`, or the oldest has waited `BURST_WAIT_FACTOR` windows.

        A plain fixed window fires on the first few requests of a burst (an agent loop submitting a
        step's prompts one Ray call at a time) and decodes a near-empty batch as long as a full one.
        After a long batch every pending request is already past its wait, so the next starts at once.
        """
        loop = asyncio.get_running_loop()
        cap = self._pending[0].arrived + self.batch_wait_s * BURST_WAIT_FACTOR
        while self._compatible_count() < self.max_batch_size:
            deadline = min(self._pending[-1].arrived + self.batch_wait_s, cap)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _compatible_count(self) -> int:
        key = self._pending[0].spec.key
        return sum(1 for r in self._pending if r.spec.key == key)

    def _take_batch(self) -> list[_Request]:
        """The oldest request plus the next ones with the same BatchKey, in arrival order."""
        key = self._pending[0].spec.key
        batch: list[_Request] = []
        rest: list[_Request] = []
        for req in self._pending:
            if req.future.cancelled():
                continue
            (batch if req.spec.key == key and len(batch) < self.max_batch_size else rest).append(req)
        self._pending = rest
        return batch

    # -- one batched generate (worker thread) -------------------------------------------------------

    def _run_batch(self, batch: list[_Request]) -> list[TokenOutput]:
        if not batch:
            return []
        start = time.perf_counter()
        key = batch[0].spec.key
        inputs = self._collate(batch)
        prompt_len = inputs["input_ids"].shape[1]
        stop_tracker = (
            RecordingStopStrings(self.tokenizer, key.stop, prompt_len, len(batch)) if key.stop else None
        )
        eos_ids = sorted(set(self.eos_ids) | set(key.stop_token_ids))
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                **self._generate_kwargs(batch, key, eos_ids, stop_tracker),
                return_dict_in_generate=True,
                output_logits=True,
            )
        new_tokens = out.sequences[:, prompt_len:].cpu()
        log_probs = _token_log_probs(out.logits, new_tokens, 1.0 if key.greedy else key.temperature)
        results = [
            self._to_output(
                new_tokens[i], log_probs[i], eos_ids, stop_tracker.stopped_at[i] if stop_tracker else None
            )
            for i in range(len(batch))
        ]
        self._record(len(batch), sum(len(r.token_ids) for r in results), time.perf_counter() - start)
        return results

    def _collate(self, batch: list[_Request]) -> dict[str, torch.Tensor]:
        """Left-padded ids and mask; image features of all rows concatenated in row order, which is
        the order the model meets the image tokens in the flattened batch."""
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, req in enumerate(batch):
            ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids, dtype=torch.long)
            mask[i, width - len(req.prompt_ids) :] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        types = self._mm_token_types(ids)
        if types is not None:
            inputs["mm_token_type_ids"] = types.to(self.device)
        with_images = [r for r in batch if r.pixel_values is not None]
        if with_images:
            pixel_values = torch.cat([r.pixel_values for r in with_images])
            inputs["pixel_values"] = pixel_values.to(self.device, dtype=self.model.dtype)
            inputs["image_grid_thw"] = torch.cat([r.image_grid_thw for r in with_images]).to(self.device)
        return inputs

    def _mm_token_types(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Which tokens are image (1) or video (2) placeholders, as the processor marks them.

        Qwen2-VL-family models in transformers >= 5.3 compute their multimodal rotary positions (M-RoPE)
        from `mm_token_type_ids`; without it they fall back to plain 1-D positions, a different function
        of the same weights, which verl's trainer (agent_loop.py `_compute_position_ids`) and the
        processor's own outputs do not use. So the server passes it exactly as the processor would."""
        if self.image_token_id is None:
            return None
        types = torch.zeros_like(ids)
        types[ids == int(self.image_token_id)] = 1
        video = getattr(self.model.config, "video_token_id", None)
        if video is not None:
            types[ids == int(video)] = 2
        return types

    def _generate_kwargs(
        self, batch: list[_Request], key: BatchKey, eos_ids: list[int], stop: RecordingStopStrings | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": key.max_tokens,
            "min_new_tokens": key.min_tokens or None,
            "repetition_penalty": key.repetition_penalty if key.repetition_penalty != 1.0 else None,
            "eos_token_id": eos_ids,
            "pad_token_id": self.pad_id,
            "do_sample": False,  # greedy, or sampling done by RowSampler (one generator per row)
            # Never emit <|image_pad|>/<|video_pad|>: a response holding one breaks every later forward
            # pass over it (features and placeholders no longer match). Trained models never pick them;
            # the untrained tiny one does, about once per few thousand sampled tokens.
            "suppress_tokens": self.placeholder_ids or None,
            # Neutralise any sampling defaults in the checkpoint's generation_config.
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if not key.greedy:
            generators = [_row_generator(req.spec.seed) for req in batch]
            sampler = RowSampler(generators, key.temperature, key.top_k, key.top_p)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        if stop is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        return kwargs

    def _to_output(
        self, tokens: torch.Tensor, log_probs: torch.Tensor, eos_ids: list[int], stop_string_at: int | None
    ) -> TokenOutput:
        """Cut one row after its first eos/stop token or stop-string completion; the rest is padding."""
        ids = tokens.tolist()
        cut: int | None = None
        eos = set(eos_ids)
        for i, t in enumerate(ids):
            if t in eos:
                cut = i + 1
                break
        if stop_string_at is not None and (cut is None or stop_string_at < cut):
            cut = stop_string_at
        length = len(ids) if cut is None else cut
        return TokenOutput(
            token_ids=ids[:length],
            log_probs=[float(x) for x in log_probs[:length].tolist()],
            stop_reason="completed" if cut is not None else "length",
        )

    def _record(self, batch_size: int, tokens: int, seconds: float) -> None:
        self._stats.requests += batch_size
        self._stats.batches += 1
        self._stats.batch_sizes.append(batch_size)
        self._stats.generated_tokens += tokens
        self._stats.generate_s += seconds


def _token_log_probs(
    step_logits: Sequence[torch.Tensor], tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax of logits / temperature at each generated token: (batch, new_tokens) float32.

    The temperature is the request's (1.0 for greedy): the distribution the token was drawn from, before
    top-k/p, which is also what verl's trainer recomputes. Raw logits at any other temperature would make
    every importance weight of the rollout correction off by the temperature's distortion.

    Step by step: stacking the steps first would copy the whole (batch, steps, vocab) block twice more,
    which for 32 answers of 1024 tokens is most of a server's peak memory."""
    out = torch.empty(tokens.shape, dtype=torch.float32)
    for t, step in enumerate(step_logits):
        chosen = tokens[:, t : t + 1].to(step.device)
        scaled = step.float() if temperature == 1.0 else step.float() / temperature
        out[:, t] = scaled.log_softmax(dim=-1).gather(-1, chosen).squeeze(-1).cpu()
    return out


def _row_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's eos ids (generation_config may list several, e.g. <|im_end|> and <|endoftext|>)."""
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            found.update([eos] if isinstance(eos, int) else eos)
    if not found and tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return sorted(int(t) for t in found)


def _placeholder_ids(config: Any) -> list[int]:
    """Token ids that stand for vision features and so must only come from the processor."""
    # The start/end markers too: a stray <|vision_start|> makes mRoPE look for an image grid that is not there.
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = (getattr(config, name, None) for name in names)
    return sorted({int(i) for i in ids if i is not None})


def _pad_id(tokenizer: Any, eos_ids: list[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if not eos_ids:
        raise ValueError("the tokenizer has no pad token and the model no eos token to pad with")
    return eos_ids[0]
