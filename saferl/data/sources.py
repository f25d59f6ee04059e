"""Source adapters: read the three public multimodal safety sets into the QI-Safe-10K row schema.

QI-Safe-10K pools BeaverTails-V, SPA-VL and VLGuard. Each publishes its own layout, labels and harm
taxonomy, so every source gets a small adapter that reads the *published* format unchanged and yields
rows in the one schema of `saferl.data.schema`; nothing downstream needs to know where a row came from.

`location` is either a local path in the published layout or a Hugging Face dataset id:

- BeaverTails-V (`PKU-Alignment/BeaverTails-V`): one parquet per harm-category config and split
  (`data/<category>/train.parquet`, `data/<category>/evaluation.parquet`), columns `question`,
  `image` (HF Image struct {bytes, path}), `category`, `image_severity`, `response`,
  `is_response_safe`. A local parquet file or a directory searched recursively.
- SPA-VL (`sqrti/SPA-VL`): parquet shards; config `default` (`data/train-*`) has `image`, `question`,
  `chosen`, `rejected`, `image_name`; configs `validation` and `test` (`harm`/`help` splits) carry the
  harm taxonomy `class1` (domain), `class2` (category), `class3` (subcategory).
- VLGuard (`ys-zong/VLGuard`): `train.json` / `test.json`, a list of records {`id`, `image` (a path
  into `train.zip` / `test.zip`), `safe`, `harmful_category`, `harmful_subcategory` (unsafe images
  only), `instr-resp`}. A local JSON file (or a directory of them); images are read from the folder
  the zip was extracted to, or straight from the zip next to the JSON.

Parquet sources on the hub go through `datasets.load_dataset`; VLGuard's hub repository holds raw
JSON + zip files rather than a loadable dataset, so its files are fetched with `huggingface_hub` and
then read exactly like a local copy.

Source categories are mapped to the policy category ids through data, `data/QI-Safe-10K/source_categories.yaml`
(matching is on normalised lowercase names); what no entry covers goes to that source's configured
fallback and is counted in `SourceStats`.
"""

from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from PIL import Image

from saferl.data.schema import SPLITS
from saferl.data.validate import parquet_files
from saferl.policies import category_ids
from saferl.resources import data_file

CATEGORY_MAP_PATH = data_file("QI-Safe-10K", "source_categories.yaml")

# BeaverTails-V publishes one config per harm category; the hub path loads all of them.
BEAVERTAILS_V_CONFIGS = (
    "animal_abuse",
    "dangerous_behavior",
    "deception_in_personal_relationships",
    "discriminatory_depictions",
    "environmental_damage",
    "false_information",
    "financial_and_academic_fraud",
    "hacking_or_digital_crime",
    "harmful_health_content",
    "horror_and_gore",
    "identity_misuse_and_impersonation",
    "insulting_and_harassing_behavior",
    "pornographic_content",
    "privacy_invasion_and_surveillance",
    "psychological_harm_and_manipulation",
    "psychological_horror_and_dark_themes",
    "sensitive_information_in_key_areas",
    "sexual_crimes",
    "terrorism_or_extremism",
    "violence_and_physical_harm",
)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SAFE_WORDS = frozenset({"yes", "true", "safe", "1"})


class SourceFormatError(ValueError):
    """A source file that does not have the published format (names the file, row and field)."""


# ---------------------------------------------------------------------------------------------------------
# Category mapping


def normalise_name(raw: str) -> str:
    """`"O12: Fraud_or-Deceptive  Action"` -> `"fraud or deceptive action"`: case, codes, separators."""
    text = re.sub(r"^o\d+\s*[:.]\s*", "", str(raw).strip().lower())
    text = re.sub(r"[^a-z0-9&/]+", " ", text)
    text = re.sub(r"\s*([&/])\s*", r" \1 ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class CategoryMap:
    fallback: str
    mapping: dict[str, str]  # normalised raw name -> policy category id


@dataclass
class SourceStats:
    """What one or more `load_source` calls produced; pass one in to collect it."""

    rows: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    # Counted per source record (a VLGuard safe image is one record, two rows):
    unmapped: Counter[str] = field(default_factory=Counter)  # raw names sent to the fallback
    missing_category: int = 0  # records whose source gives no category at all (also the fallback)

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.labels[row["safety_label"]] += 1
        self.categories[row["category"]] += 1


@functools.lru_cache(maxsize=4)
def load_category_maps(path: str | Path = CATEGORY_MAP_PATH) -> dict[str, CategoryMap]:
    """The per-source maps of `source_categories.yaml`, checked against the policy category ids."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    maps = {}
    for source, entry in data.items():
        fallback = entry["fallback"]
        targets = {fallback}
        mapping: dict[str, str] = {}
        for raw, target in (entry.get("map") or {}).items():
            key = normalise_name(raw)
            if mapping.get(key, target) != target:
                raise ValueError(f"{path}: {source}: {raw!r} maps to both {mapping[key]!r} and {target!r}")
            mapping[key] = target
            targets.add(target)
        unknown = sorted(targets - set(category_ids()))
        if unknown:
            raise ValueError(f"{path}: {source}: not policy categories: {unknown}")
        maps[source] = CategoryMap(fallback=fallback, mapping=mapping)
    return maps


def map_category(source: str, *raws: str | None, stats: SourceStats | None = None) -> str:
    """The policy category for a source's raw names, most specific first; the fallback if none maps."""
    cmap = load_category_maps()[source]
    names = [normalise_name(raw) for raw in raws if raw is not None and str(raw).strip()]
    for name in names:
        if name in cmap.mapping:
            return cmap.mapping[name]
    if stats is not None:
        if names:
            stats.unmapped[" | ".join(names)] += 1
        else:
            stats.missing_category += 1
    return cmap.fallback


# ---------------------------------------------------------------------------------------------------------
# Records: one source row or JSON record, with where it came from


@dataclass(frozen=True)
class Record:
    origin: str  # the file (or hub dataset/config/split) it came from, for messages
    key: str  # id stem for sources without ids: `<parent dir>/<file stem>` or `<config>/<split>`
    index: int  # row index within `origin`
    data: dict[str, Any]
    read_image: Callable[[str], bytes | None] | None = None  # image bytes for a path the row names

    def fail(self, name: str, problem: str = "missing or empty") -> SourceFormatError:
        return SourceFormatError(f"{self.origin}: row {self.index}: field {name!r}: {problem}")

    def text(self, name: str, *, required: bool = True) -> str | None:
        value = self.data.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if required:
            raise self.fail(name)
        return None


def encoded_image(data: bytes, record: Record, name: str) -> bytes:
    """PNG and JPEG bytes as they are; any other format PIL reads, re-encoded as PNG."""
    if data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        return data
    try:
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="PNG")
    except Exception as error:
        raise record.fail(name, f"undecodable image ({error})") from error
    return buffer.getvalue()


def image_bytes(record: Record, name: str = "image") -> bytes:
    """Encoded bytes of the row's image, given as an HF Image struct, raw bytes, a path or a PIL image."""
    value = record.data.get(name)
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
    if not data and path and record.read_image is not None:
        data = record.read_image(path)
        if data is None:
            raise record.fail(name, f"image file {path!r} not found")
    if not data:
        raise record.fail(name, "missing or empty image")
    return encoded_image(bytes(data), record, name)


def _path_reader(base: Path) -> Callable[[str], bytes | None]:
    def read(path: str) -> bytes | None:
        file = Path(path) if Path(path).is_absolute() else base / path
        return file.read_bytes() if file.is_file() else None

    return read


# ---------------------------------------------------------------------------------------------------------
# Reading published files


def _parquet_files(path: Path) -> list[Path]:
    try:
        return parquet_files(path)
    except FileNotFoundError as error:
        raise SourceFormatError(f"{path}: no parquet files found") from error


def parquet_records(path: Path, required: Iterable[str]) -> Iterator[Record]:
    """Rows of every parquet file under `path`, checking the required columns before reading any row."""
    for file in _parquet_files(path):
        try:
            parquet = pq.ParquetFile(file)
        except Exception as error:
            raise SourceFormatError(f"{file}: not a readable parquet file ({error})") from error
        missing = [name for name in required if name not in parquet.schema_arrow.names]
        if missing:
            raise SourceFormatError(f"{file}: missing column(s) {missing} (has {parquet.schema_arrow.names})")
        key = f"{file.parent.name}/{file.stem}"
        index = 0
        for batch in parquet.iter_batches(batch_size=256):
            for data in batch.to_pylist():
                yield Record(str(file), key, index, data, _path_reader(file.parent))
                index += 1


def hub_records(dataset_id: str, configs: Iterable[str | None], split: str) -> Iterator[Record]:
    """Rows of a hub dataset through `datasets.load_dataset`, images kept encoded ({bytes, path})."""
    import datasets

    for config in configs:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
        if "image" in dataset.column_names:
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        origin = f"{dataset_id}[{config or 'default'}/{split}]"
        for index, data in enumerate(dataset):
            yield Record(origin, f"{config or 'default'}/{split}", index, data)


class _VLGuardImages:
    """Finds a VLGuard image path in the extracted folder(s) or in the zip next to the JSON."""

    def __init__(self, json_file: Path) -> None:
        base, stem = json_file.parent, json_file.stem
        self.dirs = [base / stem, base, base / "images"]
        self.zip_path = base / f"{stem}.zip"
        self.stem = stem

    @functools.cached_property
    def _zip(self) -> tuple[zipfile.ZipFile, dict[str, str]] | None:
        if not self.zip_path.is_file():
            return None
        archive = zipfile.ZipFile(self.zip_path)
        names = {name: name for name in archive.namelist() if not name.endswith("/")}
        return archive, names

    def close(self) -> None:
        if "_zip" in self.__dict__ and self._zip is not None:
            self._zip[0].close()

    def __call__(self, path: str) -> bytes | None:
        for folder in self.dirs:
            if (folder / path).is_file():
                return (folder / path).read_bytes()
        if self._zip is None:
            return None
        archive, names = self._zip
        for name in (path, f"{self.stem}/{path}"):
            if name in names:
                return archive.read(name)
        return None


def _json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.json"))
    if not files:
        raise SourceFormatError(f"{path}: no JSON files found")
    return files


def vlguard_records(path: Path) -> Iterator[Record]:
    for file in _json_files(path):
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SourceFormatError(f"{file}: not a readable JSON file ({error})") from error
        if not isinstance(records, list):
            raise SourceFormatError(f"{file}: expected a JSON list of records, got {type(records).__name__}")
        images = _VLGuardImages(file)
        try:
            for index, data in enumerate(records):
                if not isinstance(data, dict):
                    kind = type(data).__name__
                    raise SourceFormatError(f"{file}: row {index}: expected a JSON object, got {kind}")
                yield Record(str(file), file.stem, index, data, images)
        finally:
            images.close()


def vlguard_hub_files(dataset_id: str, split: str) -> Path:
    """Fetch `<split>.json` and `<split>.zip` of the VLGuard hub repository; returns the JSON path."""
    from huggingface_hub import hf_hub_download

    json_file = hf_hub_download(dataset_id, f"{split}.json", repo_type="dataset")
    hf_hub_download(dataset_id, f"{split}.zip", repo_type="dataset")  # lands beside the JSON
    return Path(json_file)


# ---------------------------------------------------------------------------------------------------------
# Per-source conversion: record -> rows (without id prefix, source and split)


def schema_row(
    key: str, image: bytes, question: str, label: str, category: str, reference: str | None
) -> dict[str, Any]:
    return {
        "id": key,
        "image": image,
        "question": question,
        "safety_label": label,
        "category": category,
        "reference": reference,
        "image_objects": None,
    }


def _beavertails_reference(record: Record) -> str | None:
    """The safer response: `response` when `is_response_safe` says so; in the paired release,
    `response_<safer_response_id>`."""
    data = record.data
    if "response" in data:
        safe = str(data.get("is_response_safe", "")).strip().lower() in _SAFE_WORDS
        return record.text("response", required=False) if safe else None
    safer = data.get("safer_response_id")
    return record.text(f"response_{safer}", required=False) if safer is not None else None


def beavertails_rows(record: Record, stats: SourceStats | None) -> list[dict[str, Any]]:
    question = record.text("question")
    category = map_category("beavertails_v", record.data.get("category"), stats=stats)
    key = f"{record.key}/{record.index}"
    reference = _beavertails_reference(record)
    return [schema_row(key, image_bytes(record), question, "unsafe", category, reference)]


def spa_vl_rows(record: Record, stats: SourceStats | None) -> list[dict[str, Any]]:
    question = record.text("question")
    data = record.data
    category = map_category("spa_vl", data.get("class3"), data.get("class2"), data.get("class1"), stats=stats)
    key = f"{record.key}/{record.index}"
    reference = record.text("chosen", required=False)
    return [schema_row(key, image_bytes(record), question, "unsafe", category, reference)]


def _pairs(record: Record) -> list[dict[str, Any]]:
    pairs = record.data.get("instr-resp")
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, dict) for p in pairs):
        raise record.fail("instr-resp")
    return pairs


def vlguard_rows(record: Record, stats: SourceStats | None) -> list[dict[str, Any]]:
    data = record.data
    if not isinstance(data.get("id"), str) or not data["id"]:
        raise record.fail("id")
    if not isinstance(data.get("safe"), bool):
        raise record.fail("safe")
    category = map_category(
        "vlguard", data.get("harmful_subcategory"), data.get("harmful_category"), stats=stats
    )
    pairs, image = _pairs(record), image_bytes(record)
    rows = []
    for number, pair in enumerate(pairs):
        for kind in ("safe_instruction", "unsafe_instruction", "instruction"):
            question = pair.get(kind)
            if isinstance(question, str) and question.strip():
                break
        else:
            raise record.fail(f"instr-resp[{number}].instruction")
        if kind == "instruction" and data["safe"]:
            raise record.fail(f"instr-resp[{number}].safe_instruction")
        label = "safe" if kind == "safe_instruction" else "unsafe"
        key = data["id"] if not data["safe"] else f"{data['id']}:{label}"
        response = pair.get("response") if isinstance(pair.get("response"), str) else None
        rows.append(schema_row(key, image, question, label, category, response))
    return rows


# ---------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class SourceAdapter:
    name: str
    hub_id: str
    read_local: Callable[[Path], Iterator[Record]]
    read_hub: Callable[[str, str | None, str | None], Iterator[Record]]
    to_rows: Callable[[Record, SourceStats | None], list[dict[str, Any]]]


def _beavertails_hub(dataset_id: str, config: str | None, split: str | None) -> Iterator[Record]:
    configs = [config] if config else BEAVERTAILS_V_CONFIGS
    return hub_records(dataset_id, configs, split or "train")


def _spa_vl_hub(dataset_id: str, config: str | None, split: str | None) -> Iterator[Record]:
    return hub_records(dataset_id, [config or "default"], split or "train")


def _vlguard_hub(dataset_id: str, config: str | None, split: str | None) -> Iterator[Record]:
    return vlguard_records(vlguard_hub_files(dataset_id, split or "train"))


SOURCES: dict[str, SourceAdapter] = {
    "beavertails_v": SourceAdapter(
        name="beavertails_v",
        hub_id="PKU-Alignment/BeaverTails-V",
        read_local=lambda path: parquet_records(path, ("question", "image", "category")),
        read_hub=_beavertails_hub,
        to_rows=beavertails_rows,
    ),
    "spa_vl": SourceAdapter(
        name="spa_vl",
        hub_id="sqrti/SPA-VL",
        read_local=lambda path: parquet_records(path, ("question", "image")),
        read_hub=_spa_vl_hub,
        to_rows=spa_vl_rows,
    ),
    "vlguard": SourceAdapter(
        name="vlguard",
        hub_id="ys-zong/VLGuard",
        read_local=vlguard_records,
        read_hub=_vlguard_hub,
        to_rows=vlguard_rows,
    ),
}


def get_adapter(name: str) -> SourceAdapter:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _records(
    adapter: SourceAdapter, location: str | Path, config: str | None, hub_split: str | None
) -> Iterator[Record]:
    path = Path(location)
    if path.exists():
        return adapter.read_local(path)
    if isinstance(location, str) and HUB_ID.match(location):
        return adapter.read_hub(location, config, hub_split)
    raise SourceFormatError(f"{location}: no such file or directory (and not a hub dataset id)")


def load_source(
    name: str,
    location: str | Path,
    *,
    split: str = "train",
    limit: int | None = None,
    stats: SourceStats | None = None,
    hub_config: str | None = None,
    hub_split: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of source `name` read from `location` (a local path or a hub dataset id), in the schema.

    `split` is the QI-Safe-10K split the rows are assigned to; `hub_config` / `hub_split` choose what
    to read from the hub (defaults: every BeaverTails-V config's `train`, SPA-VL `default`/`train`,
    VLGuard `train.json`). Ids are `<source>:<original id or parent/file-stem/row-index>`, with a
    `:safe` / `:unsafe` suffix where one image carries both kinds of question.
    """
    pairs = load_source_records(
        name, location, split=split, stats=stats, hub_config=hub_config, hub_split=hub_split
    )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return _rows(pairs, limit)


def load_source_records(
    name: str,
    location: str | Path,
    *,
    split: str = "train",
    stats: SourceStats | None = None,
    hub_config: str | None = None,
    hub_split: str | None = None,
) -> Iterator[tuple[Record, dict[str, Any]]]:
    """`load_source`'s rows, each with the record it came from: for a caller that also needs a
    published field the schema drops (an evaluation benchmark reports the source's own category name)."""
    adapter = get_adapter(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _generate(adapter, location, split, stats, hub_config, hub_split)


def _rows(pairs: Iterator[tuple[Record, dict[str, Any]]], limit: int | None) -> Iterator[dict[str, Any]]:
    if limit == 0:
        return
    for count, (_, row) in enumerate(pairs, start=1):
        yield row
        if limit is not None and count >= limit:
            return


def _generate(
    adapter: SourceAdapter,
    location: str | Path,
    split: str,
    stats: SourceStats | None,
    hub_config: str | None,
    hub_split: str | None,
) -> Iterator[tuple[Record, dict[str, Any]]]:
    for record in _records(adapter, location, hub_config, hub_split):
        for row in adapter.to_rows(record, stats):
            row.update(id=f"{adapter.name}:{row['id']}", source=adapter.name, split=split)
            if stats is not None:
                stats.add(row)
            yield record, row
