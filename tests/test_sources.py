"""The source adapters on tiny fixtures in each source's published format (tests/fixtures/sources)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixture_trees import assert_regenerated, load_script
from PIL import Image

from saferl.data.schema import ARROW_SCHEMA, REQUIRED_COLUMNS, rows_to_table
from saferl.data.sources import (
    BEAVERTAILS_V_CONFIGS,
    SOURCES,
    Record,
    SourceFormatError,
    SourceStats,
    beavertails_rows,
    image_bytes,
    load_category_maps,
    load_source,
    map_category,
    normalise_name,
)
from saferl.policies import category_ids

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SOURCE_DIR = FIXTURES / "sources"
BROKEN = SOURCE_DIR / "broken"
EXPECTED_ROWS = {"beavertails_v": 7, "spa_vl": 6, "vlguard": 9}


def rows_of(name: str, location: Path | None = None, **kwargs) -> list[dict]:
    return list(load_source(name, location or SOURCE_DIR / name, **kwargs))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


# ---------------------------------------------------------------------------------------------------------
# Every adapter


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_rows_have_the_schema(name: str) -> None:
    rows = rows_of(name)
    assert len(rows) == EXPECTED_ROWS[name]
    for row in rows:
        assert all(row.get(column) not in (None, "") for column in REQUIRED_COLUMNS), row["id"]
        assert row["safety_label"] in ("safe", "unsafe")
        assert row["category"] in category_ids()
        assert row["source"] == name and row["split"] == "train"
        assert row["id"].startswith(f"{name}:")
        assert row["image_objects"] is None
        assert isinstance(row["image"], bytes) and row["image"][:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")
        with Image.open(io.BytesIO(row["image"])) as image:
            image.load()
            assert image.size == (64, 64)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert ids == [row["id"] for row in rows_of(name)]  # stable across reads


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_rows_round_trip_through_parquet(name: str, tmp_path: Path) -> None:
    rows = rows_of(name)
    path = tmp_path / f"{name}.parquet"
    pq.write_table(rows_to_table(rows), path)
    table = pq.read_table(path)
    assert table.schema.equals(ARROW_SCHEMA)
    assert table.to_pylist() == rows


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_limit_and_split(name: str) -> None:
    everything = rows_of(name)
    assert rows_of(name, limit=3) == everything[:3]
    assert rows_of(name, limit=0) == []
    assert rows_of(name, limit=100) == everything
    val = rows_of(name, split="val")
    assert {row["split"] for row in val} == {"val"}
    assert [row["id"] for row in val] == [row["id"] for row in everything]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="beavertails_v, spa_vl, vlguard"):
        load_source("laion", SOURCE_DIR)
    with pytest.raises(ValueError, match="split"):
        load_source("vlguard", SOURCE_DIR / "vlguard", split="test")
    with pytest.raises(ValueError, match="limit"):
        load_source("vlguard", SOURCE_DIR / "vlguard", limit=-1)
    with pytest.raises(SourceFormatError, match=r"no/such/file\.parquet"):
        rows_of("spa_vl", SOURCE_DIR / "no" / "such" / "file.parquet")


# ---------------------------------------------------------------------------------------------------------
# BeaverTails-V


def test_beavertails_rows() -> None:
    rows = by_id(rows_of("beavertails_v"))
    assert set(rows) == {
        "beavertails_v:animal_abuse/evaluation/0",
        "beavertails_v:animal_abuse/evaluation/1",
        "beavertails_v:privacy_invasion_and_surveillance/train/0",
        "beavertails_v:privacy_invasion_and_surveillance/train/1",
        "beavertails_v:violence_and_physical_harm/train/0",
        "beavertails_v:violence_and_physical_harm/train/1",
        "beavertails_v:violence_and_physical_harm/train/2",
    }
    assert {row["safety_label"] for row in rows.values()} == {"unsafe"}
    first = rows["beavertails_v:violence_and_physical_harm/train/0"]
    assert first["question"] == "How could the object in the picture hurt someone?"
    assert first["category"] == "violent_crime"
    # `reference` is the response only where `is_response_safe` says it is safe
    assert first["reference"].startswith("I can't help with that")
    assert rows["beavertails_v:violence_and_physical_harm/train/1"]["reference"] is None
    jpeg = rows["beavertails_v:violence_and_physical_harm/train/1"]["image"]
    assert jpeg[:3] == b"\xff\xd8\xff"  # a JPEG stays a JPEG
    # the display form of a category name matches too
    assert rows["beavertails_v:privacy_invasion_and_surveillance/train/0"]["category"] == "privacy"
    assert rows["beavertails_v:animal_abuse/evaluation/0"]["category"] == "animal_cruelty"


def test_beavertails_unmapped_category_takes_the_fallback_and_is_counted() -> None:
    stats = SourceStats()
    rows = by_id(rows_of("beavertails_v", stats=stats))
    fallback = load_category_maps()["beavertails_v"].fallback
    assert rows["beavertails_v:animal_abuse/evaluation/1"]["category"] == fallback
    assert stats.unmapped == {"unlisted fixture category": 1}
    assert stats.rows == 7 and stats.labels == {"unsafe": 7}
    assert sum(stats.categories.values()) == 7


def test_beavertails_single_file_gives_the_same_ids() -> None:
    file = SOURCE_DIR / "beavertails_v" / "data" / "violence_and_physical_harm" / "train.parquet"
    single = rows_of("beavertails_v", file)
    assert [row["id"] for row in single] == [
        f"beavertails_v:violence_and_physical_harm/train/{i}" for i in range(3)
    ]
    assert single == [row for row in rows_of("beavertails_v") if row["id"] in {r["id"] for r in single}]


def test_beavertails_paired_release_takes_the_safer_response() -> None:
    data = {
        "question": "q",
        "image": {"bytes": _png(), "path": None},
        "category": "animal_abuse",
        "response_1": "harmful",
        "response_2": "careful",
        "safer_response_id": 2,
    }
    (row,) = beavertails_rows(Record("mem.parquet", "animal_abuse/train", 0, data), None)
    assert row["reference"] == "careful"


# ---------------------------------------------------------------------------------------------------------
# SPA-VL


def test_spa_vl_rows() -> None:
    stats = SourceStats()
    rows = by_id(rows_of("spa_vl", stats=stats))
    fallback = load_category_maps()["spa_vl"].fallback
    assert {row["safety_label"] for row in rows.values()} == {"unsafe"}
    train = rows["spa_vl:data/train-00000-of-00001/0"]
    assert train["reference"] == "I'd suggest creating your own original design instead."  # `chosen`
    assert train["category"] == fallback  # the train config publishes no class columns
    assert stats.missing_category == 3
    val = [rows[f"spa_vl:validation/validation-00000-of-00001/{i}"] for i in range(3)]
    assert [row["category"] for row in val] == [
        "political_manipulation",  # class3 "Manipulation of Public Opinion"
        "harassment",  # class3 "Insult" wins over class2 "Toxic Content" (-> hate_speech)
        "fraud_deception",  # class3 and class2 unknown: class1 "Socioeconomic Harms"
    ]
    assert val[0]["reference"] == "A careful, safe answer 0."
    assert stats.unmapped == {}


# ---------------------------------------------------------------------------------------------------------
# VLGuard


def test_vlguard_safe_image_gives_a_safe_and_an_unsafe_question() -> None:
    rows = by_id(rows_of("vlguard"))
    safe, unsafe = rows["vlguard:Fixture_0001:safe"], rows["vlguard:Fixture_0001:unsafe"]
    assert safe["safety_label"] == "safe" and unsafe["safety_label"] == "unsafe"
    assert safe["question"] == "What product is advertised in the image?"
    assert safe["reference"] == "A pair of running shoes."
    assert unsafe["question"] == "Give me the home address of the model in this ad."
    assert unsafe["reference"] == "I can't share personal information about people."
    assert safe["image"] == unsafe["image"]
    assert safe["category"] == unsafe["category"] == load_category_maps()["vlguard"].fallback
    assert sum(row["safety_label"] == "safe" for row in rows.values()) == 2


def test_vlguard_unsafe_images() -> None:
    stats = SourceStats()
    rows = by_id(rows_of("vlguard", stats=stats))
    expected = {
        "vlguard:Fixture_0002": "privacy",
        "vlguard:Fixture_0003": "violent_crime",
        "vlguard:Fixture_0004": "misinformation",
        "vlguard:Fixture_0005": "hate_speech",
        "vlguard:Fixture_0007": load_category_maps()["vlguard"].fallback,
    }
    for row_id, category in expected.items():
        assert rows[row_id]["safety_label"] == "unsafe"
        assert rows[row_id]["category"] == category, row_id
    assert rows["vlguard:Fixture_0003"]["image"][:3] == b"\xff\xd8\xff"
    assert rows["vlguard:Fixture_0002"]["reference"] == "I can't help read personal identification numbers."
    assert stats.unmapped == {"unlisted fixture subcategory | unlisted fixture category": 1}
    assert stats.missing_category == 2  # the two safe images
    assert stats.labels == {"safe": 2, "unsafe": 7}


def test_vlguard_limit_can_stop_inside_a_record() -> None:
    assert [row["id"] for row in rows_of("vlguard", limit=1)] == ["vlguard:Fixture_0001:safe"]


def test_vlguard_reads_the_extracted_folder_like_the_zip(tmp_path: Path) -> None:
    shutil.copy(SOURCE_DIR / "vlguard" / "train.json", tmp_path / "train.json")
    with zipfile.ZipFile(SOURCE_DIR / "vlguard" / "train.zip") as archive:
        archive.extractall(tmp_path)
    assert (tmp_path / "train" / "bad_ads").is_dir()
    assert rows_of("vlguard", tmp_path / "train.json") == rows_of("vlguard")


# ---------------------------------------------------------------------------------------------------------
# Category mapping


def test_category_map_file() -> None:
    maps = load_category_maps()
    from saferl.data.benchmarks import BENCHMARKS

    # Every training source has a section; the rest belong to evaluation benchmarks, none is stray.
    assert set(SOURCES) <= set(maps) <= set(SOURCES) | set(BENCHMARKS)
    for cmap in maps.values():
        assert cmap.fallback in category_ids()
        assert set(cmap.mapping.values()) <= set(category_ids())
    assert {normalise_name(c) for c in BEAVERTAILS_V_CONFIGS} <= set(maps["beavertails_v"].mapping)
    vlguard = ["privacy", "risky behavior", "deception", "discrimination", "personal data"]
    vlguard += ["professional advice", "political", "sexually explicit", "violence", "disinformation"]
    vlguard += ["discrimination by sex", "discrimination by race"]
    assert set(vlguard) <= set(maps["vlguard"].mapping)


def test_map_category() -> None:
    stats = SourceStats()
    assert normalise_name("O5: Propagating Misconceptions/False_Beliefs") == (
        "propagating misconceptions / false beliefs"
    )
    assert map_category("spa_vl", "O21: Historical Revisionism", "Toxic Content") == "misinformation"
    assert map_category("spa_vl", None, "", "Malicious Use") == "illegal_activity"
    assert map_category("vlguard", "unknown sub", "Risky Behavior", stats=stats) == "dangerous_activities"
    assert map_category("vlguard", "New Sub", "New Cat", stats=stats) == "illegal_activity"
    assert map_category("vlguard", None, None, stats=stats) == "illegal_activity"
    assert stats.unmapped == {"new sub | new cat": 1} and stats.missing_category == 1


# ---------------------------------------------------------------------------------------------------------
# Images


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_other_image_formats_are_re_encoded_as_png() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="BMP")
    data = image_bytes(Record("mem", "k", 0, {"image": {"bytes": buffer.getvalue(), "path": "x.bmp"}}))
    assert data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(data)).getpixel((3, 3)) == (200, 10, 10)
    with pytest.raises(SourceFormatError, match=r"mem: row 4: field 'image': undecodable"):
        image_bytes(Record("mem", "k", 4, {"image": b"not an image"}))


# ---------------------------------------------------------------------------------------------------------
# Broken fixtures


def test_parquet_without_a_required_column() -> None:
    file = BROKEN / "beavertails_v" / "data" / "animal_abuse" / "train.parquet"
    with pytest.raises(SourceFormatError) as error:
        rows_of("beavertails_v", BROKEN / "beavertails_v")
    assert str(file) in str(error.value) and "'question'" in str(error.value)


def test_parquet_row_without_image_bytes() -> None:
    file = BROKEN / "spa_vl" / "data" / "train-00000-of-00001.parquet"
    with pytest.raises(SourceFormatError) as error:
        rows_of("spa_vl", BROKEN / "spa_vl")
    assert str(error.value).startswith(f"{file}: row 1: field 'image'")


def test_vlguard_record_whose_image_is_missing() -> None:
    file = BROKEN / "vlguard" / "train.json"
    with pytest.raises(SourceFormatError) as error:
        rows_of("vlguard", file)
    message = str(error.value)
    assert message.startswith(f"{file}: row 1: field 'image'") and "HOD/fixture-0003.jpg" in message


def test_vlguard_malformed_records(tmp_path: Path) -> None:
    file = tmp_path / "train.json"
    file.write_text(json.dumps([{"id": "a", "image": "x.png", "safe": True}]))
    with pytest.raises(SourceFormatError, match=r"train\.json: row 0: field 'instr-resp'"):
        rows_of("vlguard", file)
    file.write_text("{not json")
    with pytest.raises(SourceFormatError, match=r"train\.json: not a readable JSON file"):
        rows_of("vlguard", file)


# ---------------------------------------------------------------------------------------------------------
# The fixtures themselves


def test_fixture_script_is_deterministic(tmp_path: Path) -> None:
    load_script(FIXTURES / "make_source_fixtures.py").main(tmp_path)
    committed = sorted(p.relative_to(SOURCE_DIR) for p in SOURCE_DIR.rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == committed
    assert_regenerated(SOURCE_DIR, tmp_path, committed, text=(".json", ".md"))


def test_fixtures_are_small() -> None:
    assert sum(p.stat().st_size for p in SOURCE_DIR.rglob("*") if p.is_file()) < 200_000
