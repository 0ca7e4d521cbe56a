"""Label spaces: Cityscapes' 19 train ids and the GTA5 / Synthia mappings onto them.

The class table comes from ``cityscapesscripts.helpers.labels`` (never retyped); the GTA5 and
Synthia id tables are the ones of DAFormer's converters (``tools/convert_datasets/{gta,synthia}.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255

# GTA5 label PNGs store Cityscapes label ids (0-33), so the Cityscapes id -> train id table applies.
# Synthia (SYNTHIA-RAND-CITYSCAPES) class id -> Cityscapes train id (DAFormer synthia.py).
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip

# Evaluation subsets for Synthia-trained models (YanchaoYang/FDA evaluation_multi.py).
SYNTHIA_16_TRAIN_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13_TRAIN_IDS: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

# Thing classes used by DAFormer's ImageNet feature distance.
THING_TRAIN_IDS: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@dataclass(frozen=True)
class LabelSpace:
    """Class names, colours and ignore index of a segmentation label space."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    # Named subsets over which extra mIoUs are reported (e.g. mIoU16 for Synthia).
    eval_subsets: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colour table; entries past the classes (ignore included) are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return table

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> (H, W, 3) uint8 colours."""
        return self.palette_array()[train_ids]

    def overlay(self, image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """Blend the colourised (H, W) ids over an (H, W, 3) uint8 image; returns uint8."""
        colors = self.colorize(train_ids).astype(np.float32)
        blended = (1 - alpha) * image.astype(np.float32) + alpha * colors
        return blended.round().clip(0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "eval_subsets": {k: list(v) for k, v in self.eval_subsets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> LabelSpace:
        return cls(
            name=data["name"],
            class_names=tuple(data["class_names"]),
            palette=tuple(tuple(c) for c in data["palette"]),
            ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
            eval_subsets={k: tuple(v) for k, v in data.get("eval_subsets", {}).items()},
        )


def _cityscapes_train_labels():
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lab for lab in labels if 0 <= lab.trainId < IGNORE_INDEX), key=lambda x: x.trainId)
    assert [lab.trainId for lab in train] == list(range(19)), "unexpected cityscapesscripts table"
    return train


def cityscapes_label_space(eval_subsets: dict[str, tuple[int, ...]] | None = None) -> LabelSpace:
    """The 19-class Cityscapes train-id space used by GTA5/Synthia -> Cityscapes UDA."""
    train = _cityscapes_train_labels()
    return LabelSpace(
        name="cityscapes19",
        class_names=tuple(lab.name for lab in train),
        palette=tuple(tuple(lab.color) for lab in train),
        eval_subsets=dict(eval_subsets or {}),
    )


def label_space_for_source(source: str) -> LabelSpace:
    """Label space a model trained on ``source`` predicts in; Synthia adds mIoU16/mIoU13."""
    if source == "synthia":
        return cityscapes_label_space(
            {"mIoU16": SYNTHIA_16_TRAIN_IDS, "mIoU13": SYNTHIA_13_TRAIN_IDS}
        )
    return cityscapes_label_space()


def cityscapes_id_to_train_id_lut() -> np.ndarray:
    """(256,) uint8 lookup table: Cityscapes label id (also GTA5's label id) -> train id."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < IGNORE_INDEX:
            lut[lab.id] = lab.trainId
    return lut


def synthia_id_to_train_id_lut() -> np.ndarray:
    """(65536,) uint8 lookup table for Synthia's 16-bit class ids -> train id."""
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for synthia_id, train_id in SYNTHIA_ID_TO_TRAIN_ID.items():
        lut[synthia_id] = train_id
    return lut


def train_id_to_cityscapes_id_lut() -> np.ndarray:
    """(256,) uint8 lookup table: train id -> Cityscapes label id (ignore -> 0 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    for lab in _cityscapes_train_labels():
        lut[lab.trainId] = lab.id
    return lut


def color_to_train_id(color_label: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) gtFine_color image -> (H, W) train ids (unknown colours -> ignore).

    Exact for the 19 classes except the documented clashes (polegroup shares pole's colour,
    license plate shares car's).
    """
    rgb = color_label[..., :3].astype(np.int64)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(key.shape, IGNORE_INDEX, dtype=np.uint8)
    for lab in _cityscapes_train_labels():
        r, g, b = lab.color
        out[key == ((r << 16) | (g << 8) | b)] = lab.trainId
    return out
