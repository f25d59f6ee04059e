"""The shipped PST-20 policy file and its loader: shape, ids, lookups and validation errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from saferl.policies import (
    DEFAULT_POLICY_FILE,
    Clause,
    PolicyCategory,
    PolicyError,
    PolicySet,
    category_ids,
    load_policies,
)

EXPECTED_IDS = (
    "violent_crime",
    "weapons",
    "cbrn",
    "terrorism_extremism",
    "hate_speech",
    "harassment",
    "self_harm",
    "sexual_content",
    "child_safety",
    "privacy",
    "illegal_activity",
    "fraud_deception",
    "cybercrime",
    "drugs",
    "misinformation",
    "political_manipulation",
    "specialized_advice",
    "intellectual_property",
    "animal_cruelty",
    "dangerous_activities",
)


@pytest.fixture(scope="module")
def policies() -> PolicySet:
    return load_policies()


def test_shipped_file_loads(policies: PolicySet) -> None:
    assert DEFAULT_POLICY_FILE.is_file()
    assert policies.name == "pst20"
    assert policies.version == 1
    assert all(isinstance(c, PolicyCategory) for c in policies)


def test_twenty_categories_in_order(policies: PolicySet) -> None:
    assert len(policies) == 20
    assert policies.ids == EXPECTED_IDS
    assert category_ids() == EXPECTED_IDS
    assert [c.id for c in policies] == list(EXPECTED_IDS)


@pytest.mark.parametrize("category_id", EXPECTED_IDS)
def test_clause_counts(policies: PolicySet, category_id: str) -> None:
    category = policies.get(category_id)
    assert category.name.strip() and category.core_principle.strip()
    assert 3 <= len(category.prohibited) <= 5
    assert 2 <= len(category.boundary_cases) <= 4
    assert 3 <= len(category.rules) <= 5


def test_clause_ids_unique_and_prefixed(policies: PolicySet) -> None:
    all_ids = [clause.id for category in policies for clause in category.clauses()]
    assert len(all_ids) == len(set(all_ids))
    for category in policies:
        for letter, clauses in (
            ("P", category.prohibited),
            ("B", category.boundary_cases),
            ("R", category.rules),
        ):
            # Numbered 1..n in order, so citations stay stable and readable.
            assert [c.id for c in clauses] == [
                f"{category.id}.{letter}{n}" for n in range(1, len(clauses) + 1)
            ]
            for clause in clauses:
                assert clause.text.strip()
                assert len(clause.text) <= 200, clause.id


def test_every_category_has_an_image_rule(policies: PolicySet) -> None:
    for category in policies:
        assert any("image" in rule.text.lower() for rule in category.rules), category.id


def test_every_category_says_what_a_safe_answer_looks_like(policies: PolicySet) -> None:
    for category in policies:
        assert any("safe answer" in rule.text.lower() for rule in category.rules), category.id


def test_get_and_clause_lookups(policies: PolicySet) -> None:
    cyber = policies.get("cybercrime")
    assert cyber.name == "Cybercrime and malicious code"
    assert "cybercrime" in policies and "not_a_category" not in policies
    clause = policies.clause("cybercrime.B1")
    assert isinstance(clause, Clause)
    assert clause is cyber.boundary_cases[0]
    assert "kill" in clause.text
    assert cyber.clauses() == cyber.prohibited + cyber.boundary_cases + cyber.rules


def test_unknown_ids_raise_key_error_naming_the_id(policies: PolicySet) -> None:
    with pytest.raises(KeyError, match="not_a_category") as info:
        policies.get("not_a_category")
    assert "cybercrime" in str(info.value)  # lists the valid ids
    with pytest.raises(KeyError, match=re.escape("cybercrime.P99")):
        policies.clause("cybercrime.P99")


def test_render_contains_every_clause_id(policies: PolicySet) -> None:
    category = policies.get("weapons")
    text = category.render()
    assert category.name in text and category.core_principle in text
    for heading in ("Prohibited", "Boundary cases", "Rules"):
        assert heading in text
    for clause in category.clauses():
        assert f"[{clause.id}] {clause.text}" in text
    assert text.index("Prohibited") < text.index("Boundary cases") < text.index("Rules")


def test_load_is_cached_per_resolved_path(tmp_path: Path) -> None:
    assert load_policies() is load_policies(DEFAULT_POLICY_FILE)
    copy = tmp_path / "copy.yaml"
    copy.write_text(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_policies(str(copy)) is load_policies(copy)
    assert load_policies(copy).ids == EXPECTED_IDS


# --- validation errors on broken variants of a small, valid file ---------------------------------------


def _category(category_id: str) -> dict:
    return {
        "id": category_id,
        "name": category_id.title(),
        "core_principle": "Do no harm.",
        "prohibited": [{"id": f"{category_id}.P1", "text": "Do the harmful thing."}],
        "boundary_cases": [{"id": f"{category_id}.B1", "text": "The benign look-alike is fine."}],
        "rules": [{"id": f"{category_id}.R1", "text": "Check the image for risk cues."}],
    }


def _write(tmp_path: Path, categories: list[dict], name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", "version": 1, "categories": categories}), encoding="utf-8")
    return path


def test_small_valid_file_loads(tmp_path: Path) -> None:
    policies = load_policies(_write(tmp_path, [_category("alpha"), _category("beta")], name="ok.yaml"))
    assert policies.ids == ("alpha", "beta")
    assert policies.clause("beta.R1").text == "Check the image for risk cues."


def test_duplicate_category_id(tmp_path: Path) -> None:
    path = _write(tmp_path, [_category("alpha"), _category("alpha")])
    with pytest.raises(PolicyError, match="duplicate category id 'alpha'") as info:
        load_policies(path)
    assert str(path) in str(info.value)


def test_missing_core_principle(tmp_path: Path) -> None:
    broken = _category("alpha")
    del broken["core_principle"]
    path = _write(tmp_path, [broken])
    with pytest.raises(PolicyError, match="core_principle") as info:
        load_policies(path)
    assert str(path) in str(info.value) and "'alpha'" in str(info.value)


def test_badly_prefixed_clause_id(tmp_path: Path) -> None:
    broken = _category("alpha")
    broken["rules"][0]["id"] = "beta.R1"  # wrong category
    path = _write(tmp_path, [broken])
    with pytest.raises(PolicyError, match=re.escape("'beta.R1'")) as info:
        load_policies(path)
    assert str(path) in str(info.value) and "alpha.R" in str(info.value)

    wrong_letter = _category("alpha")
    wrong_letter["boundary_cases"][0]["id"] = "alpha.P2"  # a B clause labelled as P
    path = _write(tmp_path, [wrong_letter], name="wrong_letter.yaml")
    with pytest.raises(PolicyError, match=re.escape("'alpha.P2'")):
        load_policies(path)


def test_empty_prohibited_list(tmp_path: Path) -> None:
    broken = _category("alpha")
    broken["prohibited"] = []
    path = _write(tmp_path, [broken])
    with pytest.raises(PolicyError, match="prohibited") as info:
        load_policies(path)
    assert str(path) in str(info.value) and "'alpha'" in str(info.value)


def test_duplicate_clause_id(tmp_path: Path) -> None:
    broken = _category("alpha")
    broken["rules"].append({"id": "alpha.R1", "text": "Again."})
    path = _write(tmp_path, [broken])
    with pytest.raises(PolicyError, match=re.escape("duplicate clause id 'alpha.R1'")) as info:
        load_policies(path)
    assert str(path) in str(info.value)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)
