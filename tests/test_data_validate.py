"""The validator: the shipped sample is clean; a corrupted copy fails with every bad row named."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from saferl.data.schema import ARROW_SCHEMA, rows_to_table
from saferl.data.validate import ImageLimits, check_image, validate

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"


def _png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saferl.data", *args], capture_output=True, text=True, timeout=300
    )


def test_shipped_sample_validates_clean() -> None:
    result = _cli("validate", str(SAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith("all good")


@pytest.fixture
def corrupted(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the sample's val split with one fault per kind; returns the file and the expected
    reason per row (by id, or by row number where the id itself is broken)."""
    rows = pq.read_table(SAMPLE / "val.parquet").to_pylist()
    jpeg = io.BytesIO()
    Image.new("RGB", (512, 512), "blue").save(jpeg, format="JPEG")
    faults = {
        0: ("image", jpeg.getvalue()[:400], "undecodable image"),  # truncated JPEG
        1: ("image", None, "missing image"),
        2: ("question", "   ", "empty question"),
        3: ("safety_label", "harmful", "unknown label"),
        4: ("category", "piracy", "unknown category"),
        5: ("id", rows[6]["id"], "duplicate id"),
        7: ("image", _png((10, 300)), "image too small"),
        8: ("image", _png((5000, 40)), "image too large"),
        9: ("split", "test", "unknown split"),
        10: ("id", "", "bad id"),
    }
    expected = {}
    for index, (column, value, reason) in faults.items():
        rows[index][column] = value
        expected[f"row {index}" if column == "id" and not value else rows[index]["id"]] = reason
    path = tmp_path / "corrupted.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # an inferred schema: nulls allowed, as in the wild
    return path, expected


def test_corrupted_copy_names_every_bad_row(corrupted: tuple[Path, dict[str, str]]) -> None:
    path, expected = corrupted
    result = _cli("validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    summary, problems = lines[-1], lines[:-1]
    assert f"{len(expected)} bad" in summary
    assert len(problems) == len(expected)
    for where, reason in expected.items():
        tag = where if where.startswith("row ") else f"id {where!r}"
        assert any(tag in line and reason in line for line in problems), (where, reason, problems)


def test_write_clean_keeps_every_row(corrupted: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path, expected = corrupted
    out = tmp_path / "clean"
    report = validate(path, write_clean=out)
    clean = pq.read_table(out / "corrupted.parquet")
    rejects = pq.read_table(out / "corrupted.rejects.parquet")
    assert clean.num_rows + rejects.num_rows == pq.read_table(path).num_rows  # nothing lost
    assert rejects.num_rows == len(expected) == len(report.problems)
    assert all(rejects.column("reject_reasons").to_pylist())
    assert validate(out / "corrupted.parquet").ok


def test_missing_column_is_named_for_every_row(tmp_path: Path) -> None:
    table = pq.read_table(SAMPLE / "val.parquet").drop_columns(["category"])
    pq.write_table(table, tmp_path / "nocat.parquet")
    report = validate(tmp_path / "nocat.parquet")
    assert len(report.problems) == table.num_rows
    assert all(p.reasons == ["missing column 'category'"] for p in report.problems)


def test_duplicate_ids_across_files_are_caught(tmp_path: Path) -> None:
    rows = pq.read_table(SAMPLE / "val.parquet").to_pylist()[:3]
    pq.write_table(rows_to_table(rows), tmp_path / "a.parquet")
    pq.write_table(rows_to_table(rows[:1]), tmp_path / "b.parquet")
    report = validate(tmp_path)
    assert [(Path(p.file).name, p.id) for p in report.problems] == [("b.parquet", rows[0]["id"])]
    assert "duplicate id (first at" in report.problems[0].reasons[0]


def test_check_image_limits() -> None:
    limits = ImageLimits(min_side=28, max_side=1024, max_bytes=10_000)
    assert check_image(_png((28, 28)), limits) is None
    assert "too small" in check_image(_png((27, 64)), limits)
    assert "too large" in check_image(_png((1025, 64)), limits)
    assert "undecodable" in check_image(b"not an image", limits)
    assert "too large" in check_image(b"\0" * 10_001, limits)


def test_schema_round_trips_through_parquet(tmp_path: Path) -> None:
    table = pq.read_table(SAMPLE / "train.parquet")
    assert table.schema.equals(ARROW_SCHEMA, check_metadata=False)
    assert table.schema.field("image").type == pa.binary()


def test_missing_path_is_an_error_not_a_pass(tmp_path: Path) -> None:
    result = _cli("validate", str(tmp_path / "nope"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def _rows(n: int = 4) -> list[dict]:
    return pq.read_table(SAMPLE / "val.parquet").to_pylist()[:n]


def test_image_column_forms_are_accepted_or_named(tmp_path: Path) -> None:
    """`datasets` writes images as `{bytes, path}` structs: a real input format, validated and converted
    as bytes. A path, text, a struct without bytes or a number is named, never a traceback."""
    rows = _rows(2)
    hf = [{**r, "image": {"bytes": r["image"], "path": "x.png"}} for r in rows]
    pq.write_table(pa.Table.from_pylist(hf), tmp_path / "hf.parquet")
    assert validate(tmp_path / "hf.parquet").ok
    from saferl.data.validate import read_rows

    assert [r["image"] for r in read_rows(tmp_path / "hf.parquet")] == [r["image"] for r in rows]
    cases = {
        "path.parquet": ("images/cat.png", "image is a string ('images/cat.png')"),
        "nobytes.parquet": (
            {"bytes": None, "path": "cat.png"},
            "image struct holds a path ('cat.png') but no bytes",
        ),
        "number.parquet": (7, "image is a int"),
    }
    for name, (value, reason) in cases.items():
        pq.write_table(pa.Table.from_pylist([{**rows[0], "image": value}]), tmp_path / name)
        result = _cli("validate", str(tmp_path / name))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"id {rows[0]['id']!r}: {reason}" in result.stdout, result.stdout


def test_an_unreadable_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(rows_to_table(_rows(2)), good)
    (tmp_path / "truncated.parquet").write_bytes(good.read_bytes()[:-200])
    (tmp_path / "text.parquet").write_text("id,question\n1,hi\n")
    result = _cli("validate", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    for name in ("truncated.parquet", "text.parquet"):
        assert any(
            name in line and "not a readable parquet file" in line for line in result.stdout.splitlines()
        )
    assert "validated 2 rows in 3 file(s): 2 unreadable file(s)" in result.stdout


def test_image_objects_are_checked(tmp_path: Path) -> None:
    """A string column (JSON text, as verl-format rows carry it) or objects without the schema's shape
    used to validate as "all good"."""
    cases = {
        "text": (
            '[{"name": "knife"}]',
            "image_objects is a str, expected a list of {name, attributes, text}",
        ),
        "noname": ([{"name": "", "attributes": [], "text": None}], "image_objects[0] has no name"),
        "attrs": (
            [{"name": "car", "attributes": "red", "text": None}],
            "image_objects[0].attributes is not a list of strings",
        ),
    }
    for name, (value, reason) in cases.items():
        rows = [{**r, "image_objects": value} for r in _rows(2)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
        problems = validate(tmp_path / f"{name}.parquet").problems
        assert [p.reasons for p in problems] == [[reason], [reason]], name
