"""Judges behind one interface (`rewards.judge.Judge`), chosen by `saferl.reward.judge.kind`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..rubric import Rubric

KINDS = ("rule", "openai", "hf")


def build_judge(judge_cfg: Any, rubric: Rubric) -> Any:
    """The judge named by `judge_cfg.kind`, built from its own sub-node (`judge_cfg.<kind>`).

    Only the named judge's module is imported: `hf` brings torch and a model loader, `openai` its HTTP
    client, and a run with the offline `rule` judge needs neither."""
    cfg = (
        OmegaConf.to_container(judge_cfg, resolve=True)
        if isinstance(judge_cfg, DictConfig)
        else dict(judge_cfg)
    )
    kind = cfg.get("kind")
    options = dict(cfg.get(kind) or {})
    if kind == "rule":
        from .rule import RuleJudge

        return RuleJudge(rubric, **options)
    if kind == "openai":
        from .openai import OpenAIJudge

        return OpenAIJudge(rubric, **options)
    if kind == "hf":
        from .hf import HFJudge

        return HFJudge(rubric, **options)
    raise ValueError(f"saferl.reward.judge.kind must be one of {KINDS}, got {kind!r}")


def judge_address(judge_cfg: Any) -> str:
    """Where the configured judge is, for error messages raised far from it (e.g. in verl's trainer):
    the endpoint of an `openai` judge, the model of an `hf` one."""
    kind = judge_cfg.get("kind")
    options = judge_cfg.get(kind) or {}
    if kind == "openai":
        return f"openai judge at {str(options.get('base_url', '')).rstrip('/')}"
    if kind == "hf":
        return f"hf judge {options.get('model')}"
    return f"{kind} judge (local)"
