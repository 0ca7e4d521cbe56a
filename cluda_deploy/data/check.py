"""``cluda data check``: what is present, what is missing, and the command that fixes each gap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluda_deploy.data import layout
from cluda_deploy.data.datasets import default_root, list_folder_images
from cluda_deploy.data.io import IMAGE_SUFFIXES


@dataclass
class CheckItem:
    """One line of the report; ``fix`` is the command or download that fixes a failed item."""

    dataset: str
    what: str
    path: str
    ok: bool
    detail: str
    fix: str | None = None


def _item(dataset: str, what: str, path: Path, ok: bool, detail: str, fix: str) -> CheckItem:
    return CheckItem(dataset, what, str(path), ok, detail, None if ok else fix)


def _count(path: Path, pattern: str) -> int:
    return sum(1 for _ in path.glob(pattern)) if path.is_dir() else 0


def _stats_item(name: str, root: Path, fix: str) -> CheckItem:
    missing = [f for f in layout.CLASS_STATS_FILES if not (root / f).is_file()]
    detail = "present" if not missing else f"missing {', '.join(missing)}"
    return _item(name, "class stats", root / layout.CLASS_STATS_FILES[0], not missing, detail, fix)


def _check_flat(name: str, kind: str, root: Path, demo_fix: str | None) -> list[CheckItem]:
    """GTA5 / Synthia: images, raw labels, converted labels, class statistics."""
    download = demo_fix or layout.download_hint(kind, root)
    convert = demo_fix or layout.prepare_command(kind, root)
    image_dir = root / (layout.GTA_IMAGE_DIR if kind == "gta" else layout.SYNTHIA_IMAGE_DIR)
    label_dir = root / (layout.GTA_LABEL_DIR if kind == "gta" else layout.SYNTHIA_LABEL_DIR)
    stems = {p.stem for p in image_dir.glob("*.png")} if image_dir.is_dir() else set()
    raw = {p.stem for p in label_dir.glob("*.png") if layout.RAW_LABEL_NAME.search(p.name)}
    suffix = layout.TRAIN_ID_SUFFIX
    converted = {p.name[: -len(suffix)] for p in label_dir.glob("*" + suffix)}
    return [
        _item(name, "images", image_dir, bool(stems), f"{len(stems)} images", download),
        _item(name, "raw labels", label_dir, bool(raw) and stems <= raw,
              f"{len(stems & raw)} of {len(stems)} images labelled", download),
        _item(name, "train-id labels", label_dir, bool(stems) and stems <= converted,
              f"{len(stems & converted)} of {len(stems)} converted", convert),
        _stats_item(name, root, convert),
    ]  # fmt: skip


def _check_cityscapes(name: str, root: Path, role: str, demo_fix: str | None) -> list[CheckItem]:
    """Cityscapes: train/val images; val labels (raw and converted); class stats as a source."""
    images = demo_fix or layout.download_hint("cityscapes", root)
    labels = demo_fix or layout.download_hint("cityscapes-labels", root)
    convert = demo_fix or layout.prepare_command("cityscapes", root)
    items = []
    for split in ("train", "val"):
        image_dir = root / layout.CITYSCAPES_IMAGE_DIR / split
        n = _count(image_dir, "*/*" + layout.CITYSCAPES_IMAGE_SUFFIX)
        items.append(_item(name, f"images ({split})", image_dir, n > 0, f"{n} images", images))
    splits = ("train", "val") if role == "source" else ("val",)
    for split in splits:
        label_dir = root / layout.CITYSCAPES_LABEL_DIR / split
        n_images = _count(
            root / layout.CITYSCAPES_IMAGE_DIR / split, "*/*" + layout.CITYSCAPES_IMAGE_SUFFIX
        )
        n_raw = max(
            _count(label_dir, "*/*" + suffix)
            for suffix in (layout.CITYSCAPES_LABEL_ID_SUFFIX, layout.CITYSCAPES_POLYGON_SUFFIX,
                           layout.CITYSCAPES_COLOR_SUFFIX)
        )  # fmt: skip
        n_conv = _count(label_dir, "*/*" + layout.CITYSCAPES_TRAIN_ID_SUFFIX)
        items.append(_item(name, f"raw labels ({split})", label_dir, n_raw > 0 and n_raw >= n_images,
                           f"{n_raw} of {n_images} images labelled", labels))  # fmt: skip
        items.append(_item(name, f"train-id labels ({split})", label_dir,
                           n_conv > 0 and n_conv >= n_images,
                           f"{n_conv} of {n_images} converted", convert))  # fmt: skip
    if role == "source":
        items.append(_stats_item(name, root, convert))
    return items


def _check_folder(name: str, root: Path) -> list[CheckItem]:
    n = len(list_folder_images(root)) if root.is_dir() else 0
    fix = f"copy your target-domain images ({', '.join(IMAGE_SUFFIXES)}) into {root}"
    return [_item(name, "images", root, n > 0, f"{n} images", fix)]


def _check_one(name: str, root: Path, role: str) -> list[CheckItem]:
    if name == "folder":
        return _check_folder(name, root)
    demo_fix = layout.demo_command(root.parent) if name.startswith("demo-") else None
    kind = {"demo-source": "gta", "demo-target": "cityscapes"}.get(name, name)
    if not root.is_dir():
        fix = demo_fix or layout.download_hint(kind, root)
        if kind == "cityscapes" and not demo_fix:
            fix += "; " + layout.download_hint("cityscapes-labels", root)
        return [_item(name, "root", root, False, "folder does not exist", fix)]
    if kind == "cityscapes":
        return _check_cityscapes(name, root, role, demo_fix)
    return _check_flat(name, kind, root, demo_fix)


def check_datasets(
    source: str,
    target: str,
    data_root: str | Path,
    source_root: str | Path | None = None,
    target_root: str | Path | None = None,
) -> list[CheckItem]:
    """Check the source and target datasets of a run; each failed item names its fix."""
    items = []
    for name, explicit, role in ((source, source_root, "source"), (target, target_root, "target")):
        root = Path(explicit) if explicit else default_root(name, data_root)
        items += _check_one(name, root, role)
    return items


def format_check_report(items: list[CheckItem]) -> str:
    """Aligned text table; each failed line is followed by its fix."""
    widths = [
        max((len(getattr(i, k)) for i in items), default=0) for k in ("dataset", "what", "path")
    ]
    lines = []
    for it in items:
        cols = (it.dataset, it.what, it.path)
        row = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
        lines.append(f"{'[ok]' if it.ok else '[MISSING]':9}  {row}  {it.detail}")
        if not it.ok and it.fix:
            lines.append(f"{'':9}  -> {it.fix}")
    failed = sum(not it.ok for it in items)
    lines.append(
        f"all {len(items)} checks passed"
        if not failed
        else f"{failed} of {len(items)} checks failed"
    )
    return "\n".join(lines)
