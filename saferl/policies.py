"""PST-style safety policies, loaded as typed, validated data.

The policies live in `data/policies/pst20.yaml` rather than in prompt strings because several parts of
saferl must cite the *same* clauses: the reward judge's rubric, the reflection prompt that names the
violated category and clause, the rule-based judge and the synthetic data generator. Keeping them as
data, with stable clause ids such as `cybercrime.B1`, means a clause is written once and every consumer
refers to it by id; validation here catches a typo before it silently changes what a judge sees.

Each category is a policy document P_k = (G_k, D_k, R_k): a core principle, prohibited behaviours and
boundary cases, and actionable rules.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saferl.resources import data_file

DEFAULT_POLICY_FILE = data_file("policies", "pst20.yaml")

# Field name in the YAML -> the letter its clause ids carry ("<category>.<letter><n>").
CLAUSE_KINDS = {"prohibited": "P", "boundary_cases": "B", "rules": "R"}
_HEADINGS = {"prohibited": "Prohibited", "boundary_cases": "Boundary cases", "rules": "Rules"}


class PolicyError(ValueError):
    """A policy file is malformed; the message names the file and the offending entry or field."""


@dataclass(frozen=True)
class Clause:
    id: str
    text: str


@dataclass(frozen=True)
class PolicyCategory:
    id: str
    name: str
    core_principle: str
    prohibited: tuple[Clause, ...]
    boundary_cases: tuple[Clause, ...]
    rules: tuple[Clause, ...]

    def clauses(self) -> tuple[Clause, ...]:
        """All clauses in document order: prohibited, boundary cases, rules."""
        return self.prohibited + self.boundary_cases + self.rules

    def render(self) -> str:
        """A compact text block for prompts: name, core principle, then every clause as `[id] text`."""
        lines = [f"{self.name} ({self.id})", f"Core principle: {self.core_principle}"]
        for field, heading in _HEADINGS.items():
            lines.append(f"{heading}:")
            lines.extend(f"- [{c.id}] {c.text}" for c in getattr(self, field))
        return "\n".join(lines)


@dataclass(frozen=True)
class PolicySet:
    name: str
    version: int
    categories: tuple[PolicyCategory, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories)

    def get(self, category_id: str) -> PolicyCategory:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(f"unknown policy category {category_id!r}; valid ids: {', '.join(self.ids)}")

    def clause(self, clause_id: str) -> Clause:
        for category in self.categories:
            for clause in category.clauses():
                if clause.id == clause_id:
                    return clause
        raise KeyError(
            f"unknown policy clause {clause_id!r}; clause ids look like '<category>.P1', '.B1' or '.R1' "
            f"with category one of: {', '.join(self.ids)}"
        )

    def __contains__(self, category_id: object) -> bool:
        return any(c.id == category_id for c in self.categories)

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self) -> Iterator[PolicyCategory]:
        return iter(self.categories)


def _text(value: Any, where: str, source: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{source}: {where} is missing or empty")
    return value.strip()


def _clauses(raw: dict, field: str, category_id: str, source: Path, seen: set[str]) -> tuple[Clause, ...]:
    items = raw.get(field)
    if not isinstance(items, list) or not items:
        raise PolicyError(f"{source}: category {category_id!r} field {field!r} must be a non-empty list")
    prefix = f"{category_id}.{CLAUSE_KINDS[field]}"
    clauses = []
    for i, item in enumerate(items):
        where = f"category {category_id!r} {field}[{i}]"
        if not isinstance(item, dict):
            raise PolicyError(f"{source}: {where} must be a mapping with 'id' and 'text'")
        clause_id = _text(item.get("id"), f"{where} field 'id'", source)
        if not (clause_id.startswith(prefix) and clause_id[len(prefix) :].isdigit()):
            raise PolicyError(
                f"{source}: {where} has clause id {clause_id!r}; expected '{prefix}<n>' (e.g. {prefix}1)"
            )
        if clause_id in seen:
            raise PolicyError(f"{source}: duplicate clause id {clause_id!r} in {where}")
        seen.add(clause_id)
        clauses.append(
            Clause(id=clause_id, text=_text(item.get("text"), f"clause {clause_id!r} text", source))
        )
    return tuple(clauses)


def _parse(raw: Any, source: Path) -> PolicySet:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: top level must be a mapping with 'name', 'version' and 'categories'")
    name = _text(raw.get("name"), "field 'name'", source)
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PolicyError(f"{source}: field 'version' must be an integer, got {version!r}")
    entries = raw.get("categories")
    if not isinstance(entries, list) or not entries:
        raise PolicyError(f"{source}: field 'categories' must be a non-empty list")

    categories: list[PolicyCategory] = []
    category_ids: set[str] = set()
    clause_ids: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PolicyError(f"{source}: categories[{i}] must be a mapping")
        category_id = _text(entry.get("id"), f"categories[{i}] field 'id'", source)
        if category_id in category_ids:
            raise PolicyError(f"{source}: duplicate category id {category_id!r} at categories[{i}]")
        category_ids.add(category_id)
        categories.append(
            PolicyCategory(
                id=category_id,
                name=_text(entry.get("name"), f"category {category_id!r} field 'name'", source),
                core_principle=_text(
                    entry.get("core_principle"), f"category {category_id!r} field 'core_principle'", source
                ),
                prohibited=_clauses(entry, "prohibited", category_id, source, clause_ids),
                boundary_cases=_clauses(entry, "boundary_cases", category_id, source, clause_ids),
                rules=_clauses(entry, "rules", category_id, source, clause_ids),
            )
        )
    return PolicySet(name=name, version=version, categories=tuple(categories))


@functools.lru_cache(maxsize=32)
def _load_resolved(resolved: str) -> PolicySet:
    source = Path(resolved)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not valid YAML: {err}") from err
    return _parse(raw, source)


def load_policies(path: str | Path | None = None) -> PolicySet:
    """Load and validate a policy file (default: the shipped PST-20 set); cached per resolved path."""
    return _load_resolved(str(Path(path if path is not None else DEFAULT_POLICY_FILE).resolve()))


def category_ids() -> tuple[str, ...]:
    """The category ids of the default policy set, in file order."""
    return load_policies().ids
