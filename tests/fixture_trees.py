"""Checks that a fixture script regenerates the committed fixtures: one comparison for every script.

Text files must match byte for byte. Images may differ only as another codec build encodes them: the
same size and mode, and a mean pixel difference under 2. Parquet files must hold the same schema and
rows (image bytes compared as images), zip files the same members.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_script(path: Path) -> ModuleType:
    """A fixture script (not a package module) imported from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decoded(data: bytes) -> tuple[tuple[int, int], str, bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.mode, image.convert("RGB").tobytes()


def same_image(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    (size_a, mode_a, pixels_a), (size_b, mode_b, pixels_b) = _decoded(a), _decoded(b)
    if (size_a, mode_a) != (size_b, mode_b):
        return False
    return sum(abs(x - y) for x, y in zip(pixels_a, pixels_b, strict=True)) / len(pixels_a) < 2


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b or same_image(a, b)
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == {"bytes", "path"} == set(b):
        return a["path"] == b["path"] and same_value(a["bytes"], b["bytes"])
    return a == b


def assert_regenerated(
    committed: Path, regenerated: Path, files: Iterable[Path], text: tuple[str, ...]
) -> None:
    """Every file in `files` (relative paths) is the same under `regenerated` as under `committed`."""
    for relative in files:
        old, new = committed / relative, regenerated / relative
        if relative.suffix in text:
            assert old.read_bytes() == new.read_bytes(), relative
        elif relative.suffix == ".parquet":
            old_table, new_table = pq.read_table(old), pq.read_table(new)
            assert old_table.schema.equals(new_table.schema, check_metadata=True), relative
            for a, b in zip(old_table.to_pylist(), new_table.to_pylist(), strict=True):
                assert all(same_value(a[k], b[k]) for k in a), relative
        elif relative.suffix == ".zip":
            with zipfile.ZipFile(old) as za, zipfile.ZipFile(new) as zb:
                assert za.namelist() == zb.namelist(), relative
                assert all(same_image(za.read(n), zb.read(n)) for n in za.namelist()), relative
        else:
            assert relative.suffix in IMAGE_SUFFIXES, relative
            assert same_image(old.read_bytes(), new.read_bytes()), relative
