"""Where each dataset keeps its files, and what to tell the user when something is missing.

One place for folder names, file suffixes, download hints and the commands that fix a layout, so
that the datasets, ``prepare`` and ``check`` name the same paths and the same fixes
(research/data.md sections 2-3, research/cluda.md section 9.5).
"""

from __future__ import annotations

import re
from pathlib import Path

# Stats files written by ``prepare`` beside the data (DAFormer's tools/convert_datasets/*.py).
CLASS_STATS_FILES = (
    "sample_class_stats.json",
    "sample_class_stats_dict.json",
    "samples_with_class.json",
)
DEMO_MANIFEST = "demo_manifest.json"

# GTA5 / Synthia raw labels are named by digits only; converted ones carry this suffix.
TRAIN_ID_SUFFIX = "_labelTrainIds.png"
RAW_LABEL_NAME = re.compile(r"\d\.png$")  # DAFormer: only names ending in digit + '.png'

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
CITYSCAPES_LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
CITYSCAPES_POLYGON_SUFFIX = "_gtFine_polygons.json"
CITYSCAPES_COLOR_SUFFIX = "_gtFine_color.png"

GTA_IMAGE_DIR, GTA_LABEL_DIR = "images", "labels"
SYNTHIA_IMAGE_DIR, SYNTHIA_LABEL_DIR = "RGB", "GT/LABELS"
CITYSCAPES_IMAGE_DIR, CITYSCAPES_LABEL_DIR = "leftImg8bit", "gtFine"

TITLES = {"gta": "GTA5", "synthia": "Synthia", "cityscapes": "Cityscapes", "folder": "image folder"}


def prepare_command(dataset: str, root: str | Path) -> str:
    """The CLI command that converts labels and writes class statistics for ``dataset``."""
    return f"run 'cluda data prepare {dataset} --root {root}'"


def demo_command(demo_root: str | Path) -> str:
    """The CLI command that (re)generates the procedural demo domains under ``demo_root``."""
    return f"run 'cluda data demo --root {demo_root}'"


def download_hint(dataset: str, root: str | Path) -> str:
    """What to download, and where to unzip it, for a missing raw dataset."""
    if dataset == "gta":
        return (
            f"download the GTA5 images and labels and unzip them into {root} (images/, labels/; "
            "https://download.visinf.tu-darmstadt.de/data/from_games/)"
        )
    if dataset == "synthia":
        return (
            f"download SYNTHIA-RAND-CITYSCAPES and unzip it into {root} (RGB/, GT/LABELS/; "
            "https://synthia-dataset.net/downloads/)"
        )
    if dataset == "cityscapes":
        return (
            f"download leftImg8bit_trainvaltest.zip and unzip it into {root} "
            "(https://www.cityscapes-dataset.com/downloads/)"
        )
    if dataset == "cityscapes-labels":
        return (
            f"download gtFine_trainvaltest.zip and unzip it into {root} "
            "(https://www.cityscapes-dataset.com/downloads/)"
        )
    raise ValueError(f"no download hint for {dataset!r}")
