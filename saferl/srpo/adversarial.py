"""Post-hoc adversarial reasoning, SRPO's `adversarial` source: a generator model at an OpenAI-compatible
endpoint writes, for a prompt, a logically consistent but safety-attenuated reasoning that ends in a bad
conclusion (PST has DeepSeek-R1 "back-propagate" it). That answer is `y_l`; the row's reference answer is
`y_w`. The point is the negative PST's SRPO needs against CoT safety attenuation: an answer whose every
step looks reasonable while safety erodes, which a policy's own samples rarely show so cleanly.

Nothing the generator says is kept on its word. A reply that is not `<think>reasoning</think>answer` is
retried and then counted as a generator failure; both answers then go to the reward's own judge, and the
pair is kept only if the judge prefers the reference under PST's order (pairs.preference_key) and, for an
unsafe request, the generated answer fails the safety gate. Everything else is counted by reason.

Generations are appended to `adversarial.jsonl` beside the pairs file as they arrive, each under the hash
of its request (model, prompts, image, sampling), so a killed run resumes without paying for a reply
twice, and a changed prompt or model asks again. Judging is redone on every build: it is the cheap half,
and a changed judge must not reuse another judge's verdicts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rewards.judge import JudgeInput
from rewards.judges.chat_client import ChatClient, ChatFailure, ReplyError, request_body
from rewards.scorer import RewardScorer
from saferl.policies import load_policies

from .pairs import ADVERSARIAL, Candidate, judgement_record, pair_row, passes_safety_gate, preference_key

logger = logging.getLogger("saferl.srpo")

CACHE_FILE = "adversarial.jsonl"
PROMPT_FIELDS = ("question", "scene", "policy", "reference", "category")
_REPLY = re.compile(r"^\s*<think>(?P<reasoning>.+?)</think>\s*(?P<answer>\S.*?)\s*$", re.DOTALL)
_FENCE = re.compile(r"^\s*```[a-z]*\n(?P<body>.*?)\n```\s*$", re.DOTALL)


def parse_reply(text: str) -> str:
    """The generator's answer in the policy's format, `<think>reasoning</think>answer`, or `ReplyError`.

    A code fence around the whole reply is taken off; anything else that is not one reasoning block and
    a non-empty answer is refused, since a `y_l` in another format would teach DPO the format, not safety.
    """
    fenced = _FENCE.match(text or "")
    body = fenced.group("body") if fenced else text or ""
    match = _REPLY.match(body)
    if match is None or "<think>" in match.group("answer") or not match.group("reasoning").strip():
        raise ReplyError(f"bad reply: not '<think>reasoning</think>answer' ({len(body)} chars)")
    return f"<think>{match.group('reasoning').strip()}</think>{match.group('answer')}"


def describe_scene(objects: Any) -> str:
    """The row's image objects in words, for a generator that reads text only (PST's DeepSeek-R1)."""
    if isinstance(objects, str):
        objects = json.loads(objects)
    parts = []
    for obj in objects or []:
        words = " ".join([*(obj.get("attributes") or [])[:2], str(obj.get("name", ""))]).strip()
        if obj.get("text"):
            words += f" with the text {obj['text']!r}"
        parts.append(words)
    return ", ".join(parts) if parts else "(not described)"


def render_prompt(template: str, fields: Mapping[str, str], where: str) -> str:
    """`template` with the row's fields; a placeholder that is not one of PROMPT_FIELDS names the key."""
    try:
        return template.format_map(dict(fields))
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"{where}: bad placeholder ({type(err).__name__}: {err}); use {{{'}, {'.join(PROMPT_FIELDS)}}} "
            "and double any other brace"
        ) from None


@dataclass(frozen=True)
class Job:
    """One generation request: the prompt row it is for and the request it sends."""

    sample_id: str
    key: str  # the request's hash: what a cached reply is filed under
    system: str
    user: str
    image: bytes | None


def build_jobs(rows: Sequence[Mapping[str, Any]], adv_cfg: DictConfig) -> tuple[list[Job], Counter[str]]:
    """A request per row whose label the config lists and which has a reference; the rest, counted."""
    gen = adv_cfg.generator
    policies = load_policies()
    labels = [str(x) for x in adv_cfg.labels]
    unknown = set(labels) - set(adv_cfg.prompts)
    if unknown:
        raise ValueError(
            f"saferl.srpo.pairs.adversarial.labels: no prompt for {sorted(unknown)} in its prompts"
        )
    jobs, skipped = [], Counter()
    for row in rows:
        label = str(row["safety_label"])
        if label not in labels:
            continue
        if not (row.get("reference") or "").strip():
            skipped["no_reference"] += 1
            continue
        category = str(row.get("category") or "")
        fields = {
            "question": str(row["question"]),
            "scene": describe_scene(row.get("image_objects")),
            "policy": policies.get(category).render() if category in policies else "(none)",
            "reference": str(row["reference"]),
            "category": category,
        }
        user = render_prompt(
            str(adv_cfg.prompts[label]), fields, f"saferl.srpo.pairs.adversarial.prompts.{label}"
        )
        image = row["image"] if gen.send_image else None
        key = hashlib.sha256(
            json.dumps(
                [
                    gen.model,
                    float(gen.temperature),
                    int(gen.max_tokens),
                    int(gen.image_max_side),
                    str(adv_cfg.system),
                    user,
                ],
                ensure_ascii=False,
            ).encode()
            + hashlib.sha256(image or b"").digest()
        ).hexdigest()[:20]
        jobs.append(Job(str(row["sample_id"]), key, str(adv_cfg.system), user, image))
    return jobs, skipped


def read_cache(path: Path) -> dict[str, str]:
    """request key -> the generated answer; a torn last line (a kill mid-write) is asked again."""
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            done[entry["key"]] = entry["rejected"]
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s: an unreadable line (a run killed mid-write) is generated again", path)
    return done


def generator_client(gen_cfg: DictConfig) -> ChatClient:
    return ChatClient(
        str(gen_cfg.base_url),
        str(gen_cfg.model),
        str(gen_cfg.api_key_env),
        int(gen_cfg.max_concurrency),
        float(gen_cfg.timeout_s),
        int(gen_cfg.max_retries),
        float(gen_cfg.backoff_s),
        name=f"srpo generator {gen_cfg.model}@{str(gen_cfg.base_url).rstrip('/')}",
    )


async def _generate(
    client: ChatClient, jobs: Sequence[Job], gen_cfg: DictConfig, cache: Path, progress: bool
) -> dict[str, str]:
    """Ask for every job, appending each reply to the cache as it arrives; the replies by request key
    (a job that failed has none)."""
    from tqdm.auto import tqdm

    def build(job: Job) -> bytes:
        return request_body(
            str(gen_cfg.model),
            job.system,
            job.user,
            job.image,
            int(gen_cfg.image_max_side),
            float(gen_cfg.temperature),
            int(gen_cfg.max_tokens),
        )

    async def one(job: Job) -> tuple[Job, str | None]:
        try:
            return job, await client.complete(lambda: build(job), parse_reply, job.sample_id)
        except ChatFailure:
            return job, None  # counted, logged by the client, and asked again on the next build

    replies: dict[str, str] = {}
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            open(cache, "a", encoding="utf-8") as out,
            tqdm(total=len(jobs), desc="adversarial", disable=not progress, unit="reply") as bar,
        ):
            # Tasks started in job order (as_completed alone puts coroutines in a set, so the order
            # requests went out in would depend on memory layout, and with it which job meets a fault).
            for next_done in asyncio.as_completed([asyncio.ensure_future(one(j)) for j in jobs]):
                job, reply = await next_done
                bar.update(1)
                if reply is None:
                    continue
                out.write(json.dumps({"key": job.key, "sample_id": job.sample_id, "rejected": reply}) + "\n")
                out.flush()
                replies[job.key] = reply
    finally:
        await client.aclose()
    return replies


def generate(
    jobs: Sequence[Job], gen_cfg: DictConfig, cache: Path, progress: bool = True
) -> tuple[dict[str, str], Counter[str]]:
    """The generated answer per request key (cached or asked now), and counts."""
    done = read_cache(cache)
    todo = [j for j in jobs if j.key not in done]
    counts: Counter[str] = Counter(adversarial_requests=len(jobs), adversarial_cached=len(jobs) - len(todo))
    if todo:
        client = generator_client(gen_cfg)
        fresh = asyncio.run(_generate(client, todo, gen_cfg, cache, progress))
        done.update(fresh)
        counts["generator_failures"] = len(todo) - len(fresh)
        counts["generator_retries"] = client.stats["retries"]
        if counts["generator_failures"]:
            logger.warning(
                "srpo: the generator failed on %d of %d requests (last error: %s)",
                counts["generator_failures"],
                len(todo),
                client.last_error,
            )
    return done, counts


def adversarial_pairs(
    prompts: Mapping[str, Mapping[str, Any]],
    judged: Sequence[tuple[str, Candidate, Candidate]],
    threshold: float,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Pairs from (sample id, judged reference, judged generated answer); the rest by reason:
    `judge_failed`, `reference_fails_gate` (the reference is judged in violation: nothing to prefer),
    `not_unsafe` (the generated answer to an unsafe request passes the gate: no negative), `not_worse`
    (the judge does not rank the generated answer below the reference)."""
    rows, skipped = [], Counter()
    for sample_id, chosen, rejected in judged:
        prompt = prompts[sample_id]
        if chosen.failed or rejected.failed:
            skipped["judge_failed"] += 1
        elif not passes_safety_gate(chosen, threshold):
            skipped["reference_fails_gate"] += 1
        elif prompt["safety_label"] == "unsafe" and passes_safety_gate(rejected, threshold):
            skipped["not_unsafe"] += 1
        elif chosen.text == rejected.text or not (
            preference_key(chosen, threshold) > preference_key(rejected, threshold)
        ):
            skipped["not_worse"] += 1
        else:
            rows.append(pair_row(prompt, chosen, rejected, source=ADVERSARIAL))
    return rows, skipped


def build(
    cfg: DictConfig, rows_by_id: Mapping[str, Mapping[str, Any]], cache_dir: Path, progress: bool = True
) -> tuple[list[dict[str, Any]], Counter[str], Counter[str]]:
    """The adversarial source over the split's rows: generate (resumably), judge, pair."""
    srpo = cfg.saferl.srpo
    adv = srpo.pairs.adversarial
    rows = list(rows_by_id.values())
    if srpo.pairs.limit is not None:
        rows = rows[: int(srpo.pairs.limit)]
    jobs, skipped = build_jobs(rows, adv)
    replies, counts = generate(jobs, adv.generator, cache_dir / CACHE_FILE, progress)
    ready = [j for j in jobs if j.key in replies]
    skipped["generator_failed"] += len(jobs) - len(ready)
    items = []
    for job in ready:
        row = {**rows_by_id[job.sample_id], "id": job.sample_id}
        items += [JudgeInput.from_row(row, str(row["reference"])), JudgeInput.from_row(row, replies[job.key])]
    scored = RewardScorer.from_config(cfg.saferl.reward).score_sync(items) if items else []
    policy = f"adversarial:{adv.generator.model}"
    judged = []
    for index, job in enumerate(ready):
        chosen_s, rejected_s = scored[2 * index], scored[2 * index + 1]
        judged.append(
            (
                job.sample_id,
                Candidate.from_judgement(
                    str(rows_by_id[job.sample_id]["reference"]), judgement_record(chosen_s), "reference"
                ),
                Candidate.from_judgement(replies[job.key], judgement_record(rejected_s), policy),
            )
        )
    counts["judge_failures"] += sum(c.failed or r.failed for _, c, r in judged)
    found, pair_skipped = adversarial_pairs(rows_by_id, judged, float(srpo.pairs.safety_threshold))
    skipped.update(pair_skipped)
    return found, skipped, counts


def config_summary(adv_cfg: DictConfig) -> dict[str, Any]:
    """The generator settings for the manifest: no key (only the variable's name), no prompt text."""
    gen = OmegaConf.to_container(adv_cfg.generator, resolve=True)
    return {
        k: gen[k] for k in ("base_url", "model", "api_key_env", "temperature", "max_tokens", "send_image")
    }
