"""The reflect-and-correct agent loop, `safe_reflect` (SaFeR-VLM's safety-aware rollout).

Generate; judge the response for safety; if it is unsafe, append a policy-grounded reflection (the
violated category and clause, "look at the image again") as a user turn and let the model correct
itself on the same request id (same server, warm prefix cache). An unsafe generation is not thrown
away: the corrected trajectory enters the prompt's GRPO group and the correction is reinforced.

Token bookkeeping uses verl's Continuous Token helpers (`ct_*`), so the response mask is 1 on model
tokens and 0 on the injected reflection, and log probs stay aligned token for token. With
`reinforce: correction_only` (default) the unsafe first attempt stays in the context but carries mask
0: reinforcing a trajectory whose correction scored well must not also reinforce the unsafe attempt.

Select with `actor_rollout_ref.rollout.agent.default_agent_loop=safe_reflect`; settings live under
`saferl.rollout` (conf/saferl/rollout/default.yaml).
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer

from rewards.faults import check_failure_fraction
from rewards.judge import JudgeInput
from rewards.judges.rule import split_response
from rewards.rubric import SAFETY
from rewards.safety import SafetyCheck, safety_of
from rewards.scorer import RewardScorer, ScoredSample, extra_info
from rewards.verl_manager import image_from_prompt
from saferl.config_schema import required_node
from saferl.policies import PolicyCategory, load_policies
from saferl.resources import conf_file

from . import reflection_log

NAME = "safe_reflect"
DEFAULT_ROLLOUT_CONFIG = conf_file("saferl", "rollout", "default.yaml")
MODES = ("replace",)
REINFORCE = ("correction_only", "whole_trajectory", "correction_as_answer")
# The variant that trains the correction as the answer to the original prompt is off-policy: its tokens were
# sampled after the attempt and the reflection. verl's rollout correction weighs each token by
# pi(token | prompt) / pi(token | prompt, attempt, reflection) (old_log_prob over rollout_log_probs),
# which is what it needs on.
AS_ANSWER = "correction_as_answer"
_WORDS = re.compile(r"[a-z]+")


def load_rollout_config(
    path: str | Path = DEFAULT_ROLLOUT_CONFIG, overrides: list[str] | None = None
) -> DictConfig:
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides or []))


def _judgement(sample: ScoredSample) -> dict[str, Any]:
    """What the reflection log keeps of a verdict: the scalar, the criteria and the flags."""
    return {
        "score": float(sample.score),
        "criteria": dict(sample.criteria),
        "flags": list(sample.flags),
        "judge_error": sample.judge_error,
    }


def check_rollout_mode(cfg: Any) -> None:
    """`saferl.rollout.mode` and `reinforce`, refused with the reason when verl cannot run them."""
    if cfg.mode == "extra":
        raise ValueError(
            "saferl.rollout.mode=extra is not supported: verl 0.9.1's agent loop yields one trajectory per "
            "prompt sample, so the correction cannot be added to the group beside the unsafe attempt; "
            "use saferl.rollout.mode=replace"
        )
    if cfg.mode not in MODES or cfg.reinforce not in REINFORCE:
        raise ValueError(f"saferl.rollout: mode must be in {MODES} and reinforce in {REINFORCE}")


def merge_server_fields(first: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """The rollout server's fields over a multi-turn trajectory: every field of the first turn, and the
    weight version of the last. verl's trainer reads `min_global_steps` / `max_global_steps` of every
    trajectory (llm_server.py:158-162 sets them, trainer_base.py:1897 reads them), as verl's own
    multi-turn loop keeps them (tool_agent_loop.py:261-267)."""
    merged = dict(first)
    if later.get("max_global_steps") is not None:
        merged["max_global_steps"] = later["max_global_steps"]
    return merged


def select_clause(policy: PolicyCategory, text: str):
    """The prohibited clause that shares the most words with the question and response (P1 on ties):
    the reflection cites the clause the trajectory most plausibly breaks, without ground truth."""
    words = set(_WORDS.findall(text.lower()))
    return max(
        policy.prohibited,
        key=lambda c: (len(words & set(_WORDS.findall(c.text.lower()))), -policy.prohibited.index(c)),
    )


def visual_rule(policy: PolicyCategory) -> str:
    """The category's rule about checking the image (every policy has one), else a generic one."""
    rule = next((r for r in policy.rules if "image" in r.text.lower()), None)
    return rule.text if rule else "Check what the image itself shows before answering."


def reflection_message(
    template_cfg: Any, category: str | None, question: str, response: str
) -> tuple[str, str | None]:
    """The reflection text and the clause id it cites (None when the category is unknown)."""
    policies = load_policies()
    if not category or category not in policies:
        return str(template_cfg.unknown_category), None
    policy = policies.get(category)
    clause = select_clause(policy, f"{question} {response}")
    text = str(template_cfg.template).format(
        category_name=policy.name,
        clause_id=clause.id,
        clause_text=clause.text,
        visual_rule=visual_rule(policy),
    )
    return text, clause.id


@register(NAME)
class SafeReflectAgentLoop(AgentLoopBase):
    # Per process, per judge config: the safety checker (a judge client) and its recent failures,
    # shared by every loop instance of that config.
    _checkers: ClassVar[dict[str, tuple[RewardScorer, deque[bool]]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_length = self.rollout_config.prompt_length
        self.response_length = self.rollout_config.response_length
        self.cfg = required_node(self.config, "saferl.rollout", f"the {NAME} agent loop")
        check_rollout_mode(self.cfg)
        if self.cfg.reinforce == AS_ANSWER and not OmegaConf.select(
            self.config, "algorithm.rollout_correction.rollout_is"
        ):
            raise ValueError(
                "saferl.rollout.reinforce=correction_as_answer trains a correction as the answer to a prompt "
                "it was not sampled for: set algorithm.rollout_correction.rollout_is=token (verl's truncated "
                "importance weights) so each token is weighed by its probability under the original prompt"
            )
        reward_cfg = required_node(self.config, "saferl.reward", f"the {NAME} agent loop")
        # The last safety check judges the final answer with the reward's own judge and rubric, so its
        # score is the reward: handed to verl, the reward loop does not judge the same answer again.
        # A separate safety-check judge makes it a different judgement, and the reward loop scores.
        self.check_is_reward = self.cfg.safety_check.get("judge") is None
        if not self.check_is_reward:
            reward_cfg = OmegaConf.merge(reward_cfg, {"judge": self.cfg.safety_check.judge})
        key = OmegaConf.to_yaml(reward_cfg)
        if key not in self._checkers:
            checker = RewardScorer.from_config(reward_cfg)
            self._checkers[key] = (checker, deque(maxlen=checker.faults.window))
        self.checker, self.recent_failures = self._checkers[key]
        # saferl.train makes the run directory absolute before verl starts; a relative one (a config not
        # prepared by it) would resolve against each Ray worker's own working directory: not recorded.
        run_dir = OmegaConf.select(self.config, "trainer.default_local_dir")
        record = self.cfg.get("record_reflections") and run_dir and Path(run_dir).is_absolute()
        self.reflection_log = reflection_log.log_path(run_dir) if record else None

    async def _check(
        self, kwargs: dict[str, Any], question: str, response: str, image: bytes | None
    ) -> tuple[SafetyCheck, ScoredSample, JudgeInput]:
        item = JudgeInput.from_row(
            {**kwargs, "id": kwargs.get("sample_id"), "question": question}, response, image
        )
        [sample] = await self.checker.score([item])
        recent = self.recent_failures
        recent.append(sample.failed)
        # A judge that is down must stop the rollout, as it stops the reward (the same fault policy).
        check_failure_fraction(
            sum(recent),
            len(recent),
            self.checker.faults,
            self.checker.judge.endpoint,
            self.checker.last_error,
        )
        scale = {c.name: c.scale for c in self.checker.rubric.criteria}[SAFETY]
        answered = bool(split_response(response)[1])
        check = safety_of(sample, float(self.cfg.safety_check.threshold), scale, answered)
        return check, sample, item

    async def _generate(
        self, request_id: str, token_ids: list[int], sampling_params: dict, images, metrics: dict, used: int
    ):
        # What is left of the response budget: a correction must fit after the attempt and reflection.
        budget = max(1, self.response_length - used)
        if self.cfg.get("turn_max_tokens"):
            budget = min(budget, int(self.cfg.turn_max_tokens))
        params = {**sampling_params, "max_tokens": budget}
        with simple_timer("generate_sequences", metrics):
            return await self.server_manager.generate(
                request_id=request_id, prompt_ids=token_ids, sampling_params=params, image_data=images
            )

    async def _append_turn(self, running: list[int], output, mask: list[int], logprobs: list[float]):
        """Merge a generated turn into the running tokens: mask 1 and its log probs on its tokens."""
        merged, mask, logprobs = await self.ct_merge_assistant_token(
            running,
            output.token_ids,
            mask,
            logprobs if output.log_probs else None,
            assistant_logprobs=output.log_probs,
        )
        return merged.token_ids, mask, logprobs or []

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        messages = list(kwargs["raw_prompt"])
        question = str(kwargs.get("question") or "")
        image = image_from_prompt(messages)
        multi_modal_data = await self.process_multi_modal_info(messages)
        images = multi_modal_data.get("images")
        self._assert_mm_supported(bool(multi_modal_data))
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images)
        request_id, metrics = uuid4().hex, {}

        running, mask, logprobs = list(prompt_ids), [], []
        output = await self._generate(request_id, running, sampling_params, images, metrics, 0)
        running, mask, logprobs = await self._append_turn(running, output, mask, logprobs)
        first_end = len(mask)  # response positions of the first attempt
        server_fields = dict(output.extra_fields)
        response = first_response = self._decode(output.token_ids)
        before, judged, judged_item = await self._check(kwargs, question, response, image)
        first_judged, after = judged, before
        reflection_text = None
        clause_id, rounds = None, 0
        turns = 2

        skipped = False
        while after.verdict == "unsafe" and rounds < int(self.cfg.rounds):
            text, cited = reflection_message(self.cfg.reflection, kwargs.get("category"), question, response)
            previous = [*messages, {"role": "assistant", "content": response}]
            candidate = [*previous, {"role": "user", "content": text}]
            merged, new_mask, new_logprobs = await self.ct_merge_context_msg(
                previous, candidate, running, mask, logprobs or None
            )
            if len(new_mask) >= self.response_length:
                # No room for the reflection and a correction: keep the trajectory as it is, and say so.
                skipped = True
                break
            messages, running, mask, logprobs = candidate, merged.token_ids, new_mask, new_logprobs or []
            rounds, clause_id, reflection_text = rounds + 1, cited, text
            output = await self._generate(request_id, running, sampling_params, images, metrics, len(mask))
            running, mask, logprobs = await self._append_turn(running, output, mask, logprobs)
            server_fields = merge_server_fields(server_fields, output.extra_fields)
            response = self._decode(output.token_ids)
            after, judged, judged_item = await self._check(kwargs, question, response, image)
            turns += 2

        reflected = rounds > 0
        if reflected and self.reflection_log is not None:
            reflection_log.append(
                self.reflection_log,
                {
                    "sample_id": kwargs.get("sample_id"),
                    "safety_label": kwargs.get("safety_label"),
                    "category": kwargs.get("category"),
                    "attempt": first_response,
                    "correction": response,
                    "verdict_before": before.verdict,
                    "verdict_after": after.verdict,
                    "attempt_judgement": _judgement(first_judged),
                    "correction_judgement": _judgement(judged),
                    "global_step": server_fields.get("max_global_steps"),
                },
            )
        corrected_mask = list(mask)
        if reflected and self.cfg.reinforce == "correction_only":
            corrected_mask[:first_end] = [0] * first_end
        extra = {
            **server_fields,
            "reflected": reflected,
            "verdict_before": before.verdict,
            "verdict_after": after.verdict,
            "safety_before": before.safety,
            "safety_after": after.safety,
            "reflection_rounds": rounds,
            "reflection_skipped": "response budget exhausted" if skipped else None,
            "category": kwargs.get("category"),
            "clause_id": clause_id,
            "safety_check_error": after.error or before.error,
            "final_response": response,
            "first_response": first_response,
            "reflection_text": reflection_text,
        }
        reward_score = None
        if self.check_is_reward and not judged.failed:
            reward_score = judged.score
            extra["reward_extra_info"] = extra_info(judged, self.checker.rubric, judged_item)
        if reflected and self.cfg.reinforce == AS_ANSWER:
            # Off-policy guidance: the prompt, then the correction alone, as if it were the first answer;
            # its log probs are the sampler's (after the reflection), for verl's importance weights.
            trajectory = self._trajectory(
                prompt_ids,
                [*prompt_ids, *output.token_ids],
                [1] * len(output.token_ids),
                list(output.log_probs or []),
            )
            turns = 2
        else:
            trajectory = self._trajectory(prompt_ids, running, corrected_mask, logprobs)
        return AgentLoopOutput(
            prompt_ids=trajectory["prompt_ids"],
            response_ids=trajectory["response_ids"],
            response_mask=trajectory["response_mask"],
            response_logprobs=trajectory["response_logprobs"],
            multi_modal_data=multi_modal_data,
            reward_score=reward_score,
            num_turns=turns,
            metrics=metrics,
            extra_fields=extra,
        )

    def _trajectory(
        self, prompt_ids: list[int], running: list[int], mask: list[int], logprobs: list[float]
    ) -> dict:
        response_ids = running[len(prompt_ids) :]
        if len(response_ids) != len(mask):
            raise RuntimeError(f"response of {len(response_ids)} tokens but a mask of {len(mask)}")
        n = self.response_length
        return {
            "prompt_ids": list(prompt_ids),
            "response_ids": response_ids[:n],
            "response_mask": mask[:n],
            "response_logprobs": logprobs[:n] if logprobs else None,
        }
