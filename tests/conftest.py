"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tests use tiny tensors: one intra-op thread is faster, and immune to the spin-waits of an
    oversubscribed CPU (a test that starts subprocesses would otherwise run many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# --- demo-domain fixtures ---


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory):
    """A small copy of the demo domains (GTA-layout source, Cityscapes-layout target), prepared."""
    from cluda_deploy.data.demo import generate_demo_domains

    root = tmp_path_factory.mktemp("demo")
    generate_demo_domains(root, n_source=12, n_target_train=8, n_target_val=4, seed=0)
    return root


# --- data fixtures ---
# Tiny datasets in the real GTA5 / Synthia / Cityscapes layouts, with hand-chosen label ids.
# Imports stay inside the fixtures so this section is self-contained.

# Cityscapes label ids (GTA5 labels use the same ids) covering every train id and some ignored ids.
DATA_CITYSCAPES_ID_TILE = (
    (7, 8, 11, 12), (13, 17, 19, 20), (21, 22, 23, 24), (25, 26, 27, 28), (31, 32, 33, 0),
    (1, 4, 5, 6),
)  # fmt: skip
# Synthia class ids covering every mapped id plus the unmapped 0, 13, 14 and 22 (lane marking).
DATA_SYNTHIA_ID_TILE = (
    (3, 4, 2, 21), (5, 7, 15, 9), (6, 16, 1, 10), (17, 8, 18, 19), (20, 12, 11, 0),
    (13, 14, 22, 3),
)  # fmt: skip


def _data_label(tile, index: int):
    """(12, 8) id map: the tile upsampled 2x, rolled by ``index`` rows so files differ."""
    import numpy as np

    ids = np.kron(np.asarray(tile, dtype=np.uint16), np.ones((2, 2), dtype=np.uint16))
    return np.roll(ids, index, axis=0)


def _data_image(index: int):
    import numpy as np

    return np.random.default_rng(index).integers(0, 256, (12, 8, 3), dtype=np.uint8)


@pytest.fixture
def make_gta(tmp_path):
    """Factory: a GTA5 folder (images/NNNNN.png, labels/NNNNN.png as palette PNGs of label ids)."""
    import numpy as np
    from PIL import Image

    def make(n: int = 3, root=None):
        root = root or tmp_path / "gta"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        palette = np.random.default_rng(0).integers(0, 256, 768).tolist()
        for i in range(1, n + 1):
            Image.fromarray(_data_image(i)).save(root / "images" / f"{i:05d}.png")
            label = Image.fromarray(_data_label(DATA_CITYSCAPES_ID_TILE, i).astype(np.uint8))
            label.putpalette(palette)  # mode P, as in the GTA5 download
            label.save(root / "labels" / f"{i:05d}.png")
        return root

    return make


@pytest.fixture
def make_synthia(tmp_path):
    """Factory: a Synthia folder (RGB/, GT/LABELS/ 16-bit 3-channel PNGs, id in R, written by cv2)."""
    import cv2
    import numpy as np
    from PIL import Image

    def make(n: int = 2, root=None):
        root = root or tmp_path / "synthia"
        (root / "RGB").mkdir(parents=True)
        (root / "GT" / "LABELS").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_data_image(i)).save(root / "RGB" / f"{i:07d}.png")
            ids = _data_label(DATA_SYNTHIA_ID_TILE, i)
            instance = np.full_like(ids, 300 + i)  # > 255, so a high-byte reader sees 1
            bgr = np.stack([np.zeros_like(ids), instance, ids], axis=-1)  # cv2 writes BGR: R = ids
            assert cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), bgr)
        return root

    return make


@pytest.fixture
def make_cityscapes(tmp_path):
    """Factory: a Cityscapes folder with train/val images and gtFine *_labelIds.png."""
    import numpy as np
    from PIL import Image

    def make(splits=(("train", 2), ("val", 2)), root=None, city="testcity"):
        root = root or tmp_path / "cityscapes"
        for split, n in splits:
            images = root / "leftImg8bit" / split / city
            labels = root / "gtFine" / split / city
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for i in range(n):
                base = f"{city}_000000_{i:06d}"
                Image.fromarray(_data_image(i)).save(images / f"{base}_leftImg8bit.png")
                ids = _data_label(DATA_CITYSCAPES_ID_TILE, i).astype(np.uint8)
                Image.fromarray(ids).save(labels / f"{base}_gtFine_labelIds.png")
        return root

    return make
