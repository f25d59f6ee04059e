"""The typed shape of every `saferl.*` key, checked before a command writes anything.

One default per key: the values (and what each key means) live in the YAML that defines them
(conf/base.yaml and the `saferl.*` groups: conf/reward, conf/rollout, conf/warm_start, conf/srpo); this
module holds names and types only, so the two cannot disagree on a default. `check_saferl_config`
refuses a key the schema does not know, naming the nearest valid one (a typo in an experiment file or a
`+saferl...` override would otherwise be carried along unread), and a value of the wrong type, naming
its path, in the words a user can act on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Optional, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

# Optional[...] rather than `X | None`: OmegaConf reads the annotations at run time on Python 3.10.
# ruff: noqa: UP045


@dataclass
class CriterionConf:
    weight: float
    scale: float
    description: str


@dataclass
class SafetyGateConf:
    threshold: float
    fraction: float


@dataclass
class RubricConf:
    version: int
    criteria: dict[str, CriterionConf]
    penalties: dict[str, float]
    safety_gate: SafetyGateConf
    min_score: float
    max_score: float


@dataclass
class ChatEndpointConf:
    """An OpenAI-compatible endpoint as rewards/judges/chat_client.py reaches it."""

    base_url: str
    model: str
    api_key_env: str
    max_concurrency: int
    timeout_s: float
    max_retries: int
    backoff_s: float


@dataclass
class OpenAIJudgeConf(ChatEndpointConf):
    image_max_side: int
    temperature: float
    max_tokens: int
    json_mode: bool


@dataclass
class HFJudgeConf:
    model: str
    batch_size: int
    device: str


@dataclass
class JudgeConf:
    kind: str
    rule: dict[str, Any]
    openai: OpenAIJudgeConf
    hf: HFJudgeConf


@dataclass
class FaultsConf:
    on_failure: str
    neutral_score: float
    max_failure_fraction: float
    min_samples: int
    window: int


@dataclass
class RewardConf:
    rubric: RubricConf
    judge: JudgeConf
    faults: FaultsConf


@dataclass
class SafetyCheckConf:
    threshold: float
    judge: Optional[Any]  # a `saferl.reward.judge`-shaped node, or null: the reward's own judge


@dataclass
class ReflectionConf:
    template: str
    unknown_category: str


@dataclass
class RolloutConf:
    rounds: int
    turn_max_tokens: Optional[int]
    mode: str
    reinforce: str
    record_reflections: bool
    safety_check: SafetyCheckConf
    reflection: ReflectionConf


@dataclass
class WarmStartConf:
    split: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    max_length: int
    seed: int
    reflection: Optional[Any]  # reflection templates (the rollout's shape), or null: no reflection examples
    reflection_attempt: str


@dataclass
class GeneratorConf(ChatEndpointConf):
    send_image: bool
    image_max_side: int
    temperature: float
    max_tokens: int


@dataclass
class AdversarialConf:
    labels: list[str]
    generator: GeneratorConf
    system: str
    prompts: dict[str, str]


@dataclass
class PairsConf:
    sources: list[str]
    split: str
    reflections: str
    limit: Optional[int]
    policies: list[str]
    samples_per_prompt: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    seed: int
    safety_threshold: float
    adversarial: AdversarialConf


@dataclass
class DpoConf:
    steps: int
    batch_size: int
    lr: float
    beta: float
    loss_type: str
    max_length: Optional[int]
    reference: Optional[str]
    seed: int


@dataclass
class SrpoConf:
    output_dir: str
    policy: Optional[str]
    pairs_file: str
    pairs: PairsConf
    dpo: DpoConf


@dataclass
class DataConf:
    dir: Optional[str]
    drop_bad_rows: bool
    allow_synthetic: bool


@dataclass
class RayConf:
    address: Optional[str]


@dataclass
class SaferlConf:
    reward: RewardConf
    rollout: RolloutConf
    warm_start: WarmStartConf
    srpo: SrpoConf
    stages: list[str]
    platform: str
    env: dict[str, str]
    dry_run: bool
    console: str
    tiny_model: Optional[str]
    val_agent_loop: str
    table_rows: int
    data: DataConf
    ray: RayConf


class ConfigError(ValueError):
    """A `saferl.*` key the schema does not know, or a value of the wrong type; the message has the path."""


def _node_type(root: type, path: list[str]) -> Any:
    """The schema type at `path` under `root` (a dataclass, or a dict's value type)."""
    current: Any = root
    for key in path:
        if is_dataclass(current):
            current = get_type_hints(current).get(key)
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
        if get_origin(current) is not None and type(None) in get_args(current):  # Optional[X]
            current = next(a for a in get_args(current) if a is not type(None))
    return current


def _nearest(schema: Any, key: str) -> str:
    if not is_dataclass(schema):
        return ""
    names = [f.name for f in fields(schema)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(names)}"


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Keys holding `???`, without resolving interpolations (they point outside the `saferl` node)."""
    out = []
    if not isinstance(node, DictConfig):
        return out
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(path)
        elif not OmegaConf.is_interpolation(node, key):
            out += _missing(node._get_node(key), f"{path}.")
    return out


def check_saferl_config(cfg: DictConfig, root: str = "saferl") -> DictConfig:
    """The `saferl` node merged onto its schema; `ConfigError` naming the key's path on an unknown key,
    a wrong type, or a key without a value (a schema the YAML does not fill)."""
    node = OmegaConf.select(cfg, root)
    if node is None:
        raise ConfigError(
            f"{root}: missing from the config (run through python -m saferl.train or saferl.eval)"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SaferlConf), node)
    except ConfigKeyError as err:
        parent = str(err.full_key).rsplit(".", 1)[0] if "." in str(err.full_key) else ""
        schema = _node_type(SaferlConf, parent.split(".")) if parent else SaferlConf
        raise ConfigError(f"{root}.{err.full_key}: unknown key{_nearest(schema, str(err.key))}") from None
    except ValidationError as err:
        message = str(err).splitlines()[0]
        if "is not a ListConfig" in message:
            message = "expected a list, e.g. [a,b]"
        raise ConfigError(f"{root}.{err.full_key}: {message}") from None
    except OmegaConfBaseException as err:  # pragma: no cover - other shapes OmegaConf refuses
        raise ConfigError(f"{root}: {str(err).splitlines()[0]}") from None
    # A `???` in the YAML is a value the user must give when they use it (the hf judge's model): not ours.
    missing = sorted(set(_missing(merged)) - set(_missing(node)))
    if missing:
        raise ConfigError(f"{root}.{missing[0]}: no value (every saferl key has its default in conf/)")
    return merged


def required_node(config: Any, path: str, reader: str) -> DictConfig:
    """`path` of the run's composed config, for a part verl builds in its own process (a reward manager,
    an agent loop). Missing, it is an error rather than the shipped defaults: a run would otherwise be
    judged by a rubric nobody chose, with no word said."""
    node = OmegaConf.select(config, path)
    if node is None:
        raise ConfigError(
            f"{path}: missing from verl's config, which {reader} reads; start the run with python -m "
            "saferl.train (it composes saferl's nodes into verl's config)"
        )
    return node
