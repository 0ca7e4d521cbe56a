"""Label conversion to train ids and DAFormer's rare-class-sampling statistics.

Reproduces ``tools/convert_datasets/{gta,synthia,cityscapes}.py`` of lhoyer/DAFormer: every raw
label becomes a ``*_labelTrainIds.png`` (uint8, mode L, 255 = ignore) beside it, and the dataset
root gets ``sample_class_stats.json`` (per file: {train id: pixel count} for the classes present),
``sample_class_stats_dict.json`` (the same keyed by file) and ``samples_with_class.json``
({train id: [[file, pixel count], ...]}), which Rare Class Sampling reads
(research/cluda.md section 2.2). Files are named relative to the dataset root (POSIX separators),
matching :meth:`SegmentationDataset.index_by_label_file`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cluda_deploy.data import layout
from cluda_deploy.data.datasets import DatasetLayoutError
from cluda_deploy.data.io import (
    read_color_label,
    read_label_ids,
    read_synthia_label,
    write_json,
    write_label_png,
)
from cluda_deploy.labels import (
    cityscapes_id_to_train_id_lut,
    color_to_train_id,
    synthia_id_to_train_id_lut,
)

NUM_TRAIN_IDS = 19
# Dataset name -> converter layout; the demo domains use the GTA5 and Cityscapes layouts.
PREPARE_KINDS = {
    "gta": "gta", "synthia": "synthia", "cityscapes": "cityscapes",
    "demo-source": "gta", "demo-target": "cityscapes",
}  # fmt: skip
# Class statistics of Cityscapes cover the train split only, as in DAFormer's cityscapes.py.
CITYSCAPES_STATS_SPLIT = "train"


@dataclass(frozen=True)
class _Job:
    source: str  # 'label_ids' | 'synthia' | 'polygons' | 'color'
    src: Path
    dst: Path
    stats: bool  # whether the file enters the class statistics


@cache
def _lut(source: str) -> np.ndarray:
    return synthia_id_to_train_id_lut() if source == "synthia" else cityscapes_id_to_train_id_lut()


def _polygons_to_train_ids(path: Path) -> np.ndarray:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    annotation = Annotation()
    annotation.fromJsonFile(str(path))
    return np.asarray(createLabelImage(annotation, "trainIds"), dtype=np.uint8)


def to_train_ids(source: str, path: Path) -> np.ndarray:
    """Read one raw label and map it to (H, W) uint8 train ids."""
    if source == "label_ids":
        return _lut(source)[read_label_ids(path, expected="a label-id PNG")]
    if source == "synthia":
        return _lut(source)[read_synthia_label(path)]
    if source == "polygons":
        return _polygons_to_train_ids(path)
    if source == "color":
        return color_to_train_id(read_color_label(path))
    raise ValueError(f"unknown label source {source!r}")


def class_pixel_counts(train_ids: np.ndarray) -> dict[int, int]:
    """{train id: pixel count} for the classes present (ignore excluded)."""
    counts = np.bincount(train_ids.ravel(), minlength=256)[:NUM_TRAIN_IDS]
    return {int(c): int(n) for c, n in enumerate(counts) if n > 0}


def _convert(job: _Job) -> dict[int, int]:
    train_ids = to_train_ids(job.source, job.src)
    write_label_png(job.dst, train_ids)
    return class_pixel_counts(train_ids)


# --------------------------------------------------------------------------- jobs per layout


def _flat_jobs(kind: str, root: Path) -> list[_Job]:
    label_dir = root / (layout.GTA_LABEL_DIR if kind == "gta" else layout.SYNTHIA_LABEL_DIR)
    raw = sorted(p for p in label_dir.glob("*.png") if layout.RAW_LABEL_NAME.search(p.name))
    if not raw:
        raise DatasetLayoutError(
            f"no {layout.TITLES[kind]} labels under {label_dir} (no raw *<digits>.png); "
            + layout.download_hint(kind, root)
        )
    source = "label_ids" if kind == "gta" else "synthia"
    return [_Job(source, p, p.with_name(p.stem + layout.TRAIN_ID_SUFFIX), True) for p in raw]


def _cityscapes_jobs(root: Path) -> list[_Job]:
    """One job per annotated frame: from labelIds, else polygons JSON, else gtFine_color."""
    label_dir = root / layout.CITYSCAPES_LABEL_DIR
    sources = (
        ("label_ids", layout.CITYSCAPES_LABEL_ID_SUFFIX),
        ("polygons", layout.CITYSCAPES_POLYGON_SUFFIX),
        ("color", layout.CITYSCAPES_COLOR_SUFFIX),
    )
    frames: dict[Path, tuple[str, Path]] = {}
    for source, suffix in reversed(sources):  # earlier sources overwrite later ones
        for path in label_dir.glob(f"*/*/*{suffix}"):
            frames[path.with_name(path.name[: -len(suffix)])] = (source, path)
    if not frames:
        raise DatasetLayoutError(
            f"no Cityscapes labels under {label_dir} (no *{layout.CITYSCAPES_LABEL_ID_SUFFIX}, "
            f"*{layout.CITYSCAPES_POLYGON_SUFFIX} or *{layout.CITYSCAPES_COLOR_SUFFIX}); "
            + layout.download_hint("cityscapes-labels", root)
        )
    jobs = []
    for base in sorted(frames):
        source, src = frames[base]
        split = base.relative_to(label_dir).parts[0]
        dst = base.with_name(base.name + layout.CITYSCAPES_TRAIN_ID_SUFFIX)
        jobs.append(_Job(source, src, dst, split == CITYSCAPES_STATS_SPLIT))
    return jobs


# --------------------------------------------------------------------------- stats files


def write_class_stats(root: str | Path, per_file: list[tuple[str, dict[int, int]]]) -> None:
    """Write DAFormer's three class-statistics files for ``[(file, {train id: n}), ...]``."""
    root = Path(root)
    sample_class_stats = [
        {"file": f, **{str(c): n for c, n in counts.items()}} for f, counts in per_file
    ]
    stats_dict = {f: {str(c): n for c, n in counts.items()} for f, counts in per_file}
    with_class: dict[str, list[list]] = {}
    for f, counts in per_file:
        for c, n in counts.items():
            with_class.setdefault(str(c), []).append([f, n])
    with_class = {c: with_class[c] for c in sorted(with_class, key=int)}
    files = layout.CLASS_STATS_FILES
    write_json(root / files[0], sample_class_stats)
    write_json(root / files[1], stats_dict)
    write_json(root / files[2], with_class)


@dataclass
class ClassStats:
    """Class statistics of one dataset, as :func:`prepare_dataset` wrote them.

    ``per_file``: label file (relative to the dataset root) -> {train id: pixel count};
    ``samples_with_class``: train id -> [(label file, pixel count), ...].
    """

    per_file: dict[str, dict[int, int]]
    samples_with_class: dict[int, list[tuple[str, int]]]

    def class_pixels(self) -> dict[int, int]:
        """Total pixels per train id over the dataset (the n_c of RCS's f_c = n_c / sum n_c)."""
        return {c: sum(n for _, n in files) for c, files in sorted(self.samples_with_class.items())}


def _guess_dataset(root: Path) -> str:
    if (root / layout.GTA_IMAGE_DIR).is_dir():
        return "gta"
    if (root / layout.SYNTHIA_IMAGE_DIR).is_dir():
        return "synthia"
    if (root / layout.CITYSCAPES_IMAGE_DIR).is_dir():
        return "cityscapes"
    return "<dataset>"


def load_class_stats(root: str | Path, dataset: str | None = None) -> ClassStats:
    """Read the statistics written by :func:`prepare_dataset` under ``root``."""
    root = Path(root)
    paths = [root / name for name in layout.CLASS_STATS_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        name = dataset or _guess_dataset(root)
        raise FileNotFoundError(
            f"class statistics not found: {missing[0]}; {layout.prepare_command(name, root)}"
        )
    per_file = json.loads(paths[1].read_text())
    with_class = json.loads(paths[2].read_text())
    return ClassStats(
        per_file={f: {int(c): int(n) for c, n in d.items()} for f, d in per_file.items()},
        samples_with_class={int(c): [(f, int(n)) for f, n in v] for c, v in with_class.items()},
    )


# --------------------------------------------------------------------------- entry point


def prepare_dataset(name: str, root: str | Path, workers: int = 4, progress: bool = True) -> dict:
    """Convert every raw label under ``root`` to train ids and write the class statistics.

    ``name``: gta | synthia | cityscapes (or demo-source / demo-target). Re-running converts again
    and overwrites; converted files are never taken for raw ones. Returns a report dict.
    """
    if name not in PREPARE_KINDS:
        raise ValueError(
            f"cannot prepare {name!r}; preparable datasets: {', '.join(PREPARE_KINDS)}"
        )
    kind, root, start = PREPARE_KINDS[name], Path(root), time.perf_counter()
    if not root.is_dir():
        hint = layout.download_hint(kind, root)
        raise DatasetLayoutError(f"{layout.TITLES[kind]} root {root} does not exist; {hint}")
    jobs = _cityscapes_jobs(root) if kind == "cityscapes" else _flat_jobs(kind, root)

    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        chunk = max(1, len(jobs) // (workers * 8))
        results = pool.map(_convert, jobs, chunksize=chunk) if pool else map(_convert, jobs)
        bar = tqdm(
            results, total=len(jobs), desc=f"prepare {name}", unit="label", disable=not progress
        )
        counts = list(bar)

    per_file = [
        (job.dst.relative_to(root).as_posix(), c)
        for job, c in zip(jobs, counts, strict=True)
        if job.stats
    ]
    if per_file:
        write_class_stats(root, per_file)
    totals: Counter[int] = Counter()
    for _, c in per_file:
        totals.update(c)
    return {
        "dataset": name,
        "root": str(root),
        "converted": len(jobs),
        "sources": dict(Counter(job.source for job in jobs)),
        "stats_files": len(per_file),
        "stats_written": bool(per_file),
        "class_pixels": dict(sorted(totals.items())),
        "seconds": round(time.perf_counter() - start, 3),
    }
