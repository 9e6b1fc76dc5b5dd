"""Datasets of the transfer benchmark: generated on disk, deterministic from a seed.

Two shapes (the issue's spec):

* ``random``: files of 4 MiB random bytes (``.bin``), flat; ``200M`` is 50 of them;
* ``mixed``: files of log-uniform sizes (4 KiB to about 8 MiB, scaled so they
  add up to the total exactly) in nested subject/session/series directories;
  every other file is compressible: DICOM-like (a 16-bit smooth image with
  mild noise after a DICOM preamble, ``.dcm``) or numeric CSV text
  (``.txt``); the rest are random bytes named ``.nii.gz`` or ``.bin``.
  ``1G`` is 1,000 such files.

A dataset lives in ``<datasets>/<name>/tree/`` with ``manifest.json`` beside
it (relative path → size and SHA-256); an existing dataset whose manifest
matches its parameters is reused, so ``--keep`` makes the next run faster.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

#: Size of the files of a ``random`` dataset (the spec's 50 × 4 MiB).
RANDOM_FILE_BYTES = 4 * MIB
#: Bounds of the log-uniform sizes of a ``mixed`` dataset, before scaling.
MIXED_MIN_BYTES = 4 * KIB
MIXED_MAX_BYTES = 8 * MIB
#: Files of a ``mixed`` dataset per GiB (the spec's 1,000 files for 1 GiB).
MIXED_FILES_PER_GIB = 1000

# Bumped whenever the generator changes, so stale datasets are rebuilt.
_GENERATOR_VERSION = 1
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMG])$", re.IGNORECASE)
_UNITS = {"K": KIB, "M": MIB, "G": GIB}


class Shape(StrEnum):
    """How a dataset's bytes are laid out (see the module docstring)."""

    RANDOM = "random"
    MIXED = "mixed"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to generate: its label (``200M``), total bytes, shape and file count."""

    label: str
    total_bytes: int
    shape: Shape
    nfiles: int

    @property
    def name(self) -> str:
        """Directory name of the dataset: label, shape and file count."""
        return f"{self.label}-{self.shape.value}-{self.nfiles}"


def parse_spec(token: str) -> DatasetSpec:
    """A dataset from ``<size>[:random|:mixed]``, e.g. ``200M``, ``1G``, ``16M:random``.

    Without a shape, ``200M`` is ``random`` (the spec's 50 × 4 MiB) and any
    other size is ``mixed`` with 1,000 files per GiB (at least 10). Raises
    :class:`ValueError` for a token that is not a size.
    """
    size_text, _, shape_text = token.strip().partition(":")
    match = _SIZE.match(size_text)
    if not match:
        raise ValueError(f"not a dataset size: {token!r} (expected e.g. 200M, 1G, 16M:random)")
    total = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if total < MIXED_MIN_BYTES:
        raise ValueError(f"dataset {token!r} is smaller than {MIXED_MIN_BYTES} bytes")
    label = size_text.upper()
    if shape_text:
        shape = Shape(shape_text.lower())
    else:
        shape = Shape.RANDOM if label == "200M" else Shape.MIXED
    if shape is Shape.RANDOM:
        nfiles = max(1, math.ceil(total / RANDOM_FILE_BYTES))
    else:
        nfiles = max(10, round(total * MIXED_FILES_PER_GIB / GIB))
    return DatasetSpec(label, total, shape, nfiles)


@dataclass(frozen=True)
class Dataset:
    """A generated dataset: its tree and, per relative path, size and SHA-256 (hex)."""

    spec: DatasetSpec
    root: Path
    files: dict[str, tuple[int, str]]

    @property
    def nbytes(self) -> int:
        """Total bytes of the files."""
        return sum(size for size, _ in self.files.values())

    def paths(self) -> list[Path]:
        """The files, in sorted relative-path order (the order of the raw transfers)."""
        return [self.root / rel for rel in sorted(self.files)]


def ensure_dataset(spec: DatasetSpec, datasets_dir: Path, seed: int) -> Dataset:
    """The dataset of ``spec`` under ``datasets_dir``: reused if its manifest matches, else built.

    Raises :class:`OSError` if the files cannot be written.
    """
    base = datasets_dir / spec.name
    manifest_path = base / "manifest.json"
    params = {"version": _GENERATOR_VERSION, "seed": seed, "spec": spec.name}
    root = base / "tree"
    if manifest_path.exists():
        stored = json.loads(manifest_path.read_text())
        if stored.get("params") == params:
            files = {rel: (int(size), digest) for rel, (size, digest) in stored["files"].items()}
            # a cheap check that the tree is still there (a full hash takes seconds)
            if all(
                (root / rel).is_file() and (root / rel).stat().st_size == size
                for rel, (size, _) in files.items()
            ):
                return Dataset(spec, root, files)
    shutil.rmtree(base, ignore_errors=True)
    root.mkdir(parents=True)
    files = {}
    for rel, data in _generate(spec, seed):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files[rel] = (len(data), hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps({"params": params, "files": files}, indent=0))
    return Dataset(spec, root, files)


def tree_mismatches(dataset: Dataset, tree: Path) -> list[str]:
    """How ``tree`` differs from the dataset (every file's size and SHA-256); [] if equal.

    Reads every file of ``tree``: seconds for 1 GiB, so never call it inside
    a timed section.
    """
    found: dict[str, Path] = {}
    for dirpath, _dirs, names in os.walk(tree):
        for name in names:
            full = Path(dirpath) / name
            found[full.relative_to(tree).as_posix()] = full
    problems = [f"missing {rel}" for rel in sorted(set(dataset.files) - set(found))]
    problems += [f"unexpected {rel}" for rel in sorted(set(found) - set(dataset.files))]
    for rel in sorted(set(found) & set(dataset.files)):
        size, digest = dataset.files[rel]
        path = found[rel]
        if path.stat().st_size != size:
            problems.append(f"size of {rel}: {path.stat().st_size} != {size}")
        elif _sha256(path) != digest:
            problems.append(f"content of {rel} differs")
    return problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


# -- generation -----------------------------------------------------------------


def _generate(spec: DatasetSpec, seed: int) -> Iterator[tuple[str, bytes]]:
    """``(relative path, contents)`` of every file of the dataset."""
    rng = random.Random(f"{seed}:{spec.name}")
    if spec.shape is Shape.RANDOM:
        remaining = spec.total_bytes
        for i in range(spec.nfiles):
            size = min(RANDOM_FILE_BYTES, remaining)
            remaining -= size
            yield f"file-{i:04d}.bin", rng.randbytes(size)
        return
    sizes = _mixed_sizes(rng, spec.nfiles, spec.total_bytes)
    pools = _Pools(rng)
    for i, size in enumerate(sizes):
        subject, session, series = i % 10, (i // 10) % 2 + 1, (i // 20) % 5
        where = f"sub-{subject:02d}/ses-{session}/series-{series}"
        if i % 2 == 0:
            # compressible: four in five DICOM-like images, one in five CSV tables
            if i % 10 == 8:
                yield f"{where}/table-{i:04d}.txt", pools.csv(rng, size)
            else:
                yield f"{where}/image-{i:04d}.dcm", pools.dicom(rng, size)
        else:
            ext = "nii.gz" if i % 4 == 1 else "bin"
            yield f"{where}/volume-{i:04d}.{ext}", rng.randbytes(size)


def _mixed_sizes(rng: random.Random, nfiles: int, total: int) -> list[int]:
    """``nfiles`` log-uniform sizes scaled to add up to exactly ``total`` bytes."""
    lo, hi = math.log(MIXED_MIN_BYTES), math.log(MIXED_MAX_BYTES)
    raw = [math.exp(rng.uniform(lo, hi)) for _ in range(nfiles)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    # rounding leaves a few bytes over or short: the largest file absorbs them
    biggest = max(range(nfiles), key=sizes.__getitem__)
    sizes[biggest] += total - sum(sizes)
    return sizes


class _Pools:
    """Compressible material, made once per dataset and cut into files.

    Repeating blocks of 512 KiB or more never helps deflate (its window is
    32 KiB), so files cut from these pools compress as well as their blocks
    do, no better: about what real DICOM pixel data and CSV tables give.
    """

    #: Side of the smooth 16-bit test images (pixels).
    SIDE = 512

    def __init__(self, rng: random.Random) -> None:
        self.images = [int.from_bytes(self._smooth_image(rng), "little") for _ in range(4)]
        self.tables = [self._csv_block(rng) for _ in range(8)]
        self.image_bytes = 2 * self.SIDE * self.SIDE
        n = self.image_bytes // 2
        # 16-bit little-endian pixels: keep the image's bits but the low 3,
        # which become noise (detector noise of a CT or MR image)
        self.keep_mask = int.from_bytes(b"\xf8\xff" * n, "little")
        self.noise_mask = int.from_bytes(b"\x07\x00" * n, "little")

    def _smooth_image(self, rng: random.Random) -> bytes:
        """A 512 × 512 16-bit image: a few broad blobs on a gradient (12-bit values).

        The blobs are separable Gaussians, so each row is a weighted sum of a
        few precomputed 1-D profiles (a list comprehension per row, not a
        Python loop per pixel and blob).
        """
        side = self.SIDE
        blobs = [
            (
                rng.uniform(0, side),
                rng.uniform(0, side),
                rng.uniform(40, 160),
                rng.uniform(500, 2000),
            )
            for _ in range(4)
        ]

        def profile(center: float, radius: float) -> list[float]:
            return [math.exp(-((i - center) ** 2) / (2 * radius * radius)) for i in range(side)]

        px = [profile(bx, r) for bx, _, r, _ in blobs]
        py = [profile(by, r) for _, by, r, _ in blobs]
        ramp = [200.0 + 0.5 * x for x in range(side)]
        pixels = array("H")
        for y in range(side):
            w0, w1, w2, w3 = (h * py[k][y] for k, (_, _, _, h) in enumerate(blobs))
            offset = 0.3 * y
            pixels.extend(
                min(4095, int(r + offset + w0 * a + w1 * b + w2 * c + w3 * d))
                for r, a, b, c, d in zip(ramp, *px, strict=True)
            )
        if sys.byteorder != "little":
            pixels.byteswap()
        return pixels.tobytes()

    @staticmethod
    def _csv_block(rng: random.Random) -> bytes:
        """About 1 MiB of CSV: an id, a timestamp and measurements per row."""
        rows: list[str] = []
        length = 0
        t = rng.randrange(1_600_000_000, 1_700_000_000)
        while length < MIB:
            t += rng.randrange(1, 30)
            values = ",".join(f"{rng.gauss(100, 15):.3f}" for _ in range(6))
            rows.append(f"{rng.randrange(10**6):06d},{t},{values}\n")
            length += len(rows[-1])
        return "".join(rows).encode()

    def dicom(self, rng: random.Random, size: int) -> bytes:
        """A DICOM-like file of ``size`` bytes: preamble, ``DICM``, a header, noisy pixels."""
        header = (
            b"\0" * 128
            + b"DICM"
            + f"1.2.840.10008.5.1.4.1.1.2 CT {rng.getrandbits(64):016x} MONOCHROME2 ".encode()
        )
        out = bytearray(header[:size])
        while len(out) < size:
            image = self.images[rng.randrange(len(self.images))]
            noise = int.from_bytes(rng.randbytes(self.image_bytes), "little")
            # bitwise mixing of whole images as big integers: a few C calls, not a
            # Python loop over 262,144 pixels
            mixed = (image & self.keep_mask) | (noise & self.noise_mask)
            out += mixed.to_bytes(self.image_bytes, "little")
        return bytes(out[:size])

    def csv(self, rng: random.Random, size: int) -> bytes:
        """``size`` bytes of CSV text cut from the pool's blocks, in random order."""
        out = bytearray()
        while len(out) < size:
            out += self.tables[rng.randrange(len(self.tables))]
        return bytes(out[:size])
