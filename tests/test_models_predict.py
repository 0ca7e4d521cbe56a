"""Segmenter.predict: whole-image and sliding-window inference at any input size."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import Segmenter, create_segmenter, slide_windows
from cluda_deploy.models.heads import DecodeHead


@pytest.fixture(scope="module")
def tiny() -> Segmenter:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="mit_tiny", num_classes=3, embed_dim=16, fusion_channels=16)
    return create_segmenter(cfg).eval()


class PixelwiseBackbone(nn.Module):
    """A 1x1 conv: what it gives a pixel does not depend on where the window starts."""

    channels, strides = [4], [1]

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, images: Tensor) -> list[Tensor]:
        return [self.proj(images)]


class WindowMeanBackbone(nn.Module):
    """Every pixel of a window gets the window's mean of channel 0: shows the averaging."""

    channels, strides = [1], [1]

    def forward(self, images: Tensor) -> list[Tensor]:
        return [images[:, :1].mean(dim=(2, 3), keepdim=True).expand_as(images[:, :1])]


class PixelwiseHead(DecodeHead):
    def __init__(self, channels: int, num_classes: int):
        super().__init__(num_classes, channels, output_stride=1)
        self.conv = nn.Conv2d(channels, num_classes, 1) if channels != num_classes else None

    def forward_with_features(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = features[-1]
        return (self.conv(x) if self.conv is not None else x), x


def test_slide_windows_cityscapes_protocol():
    # HRDA/CLUDA evaluation: 1024x1024 windows, stride 512, over 2048x1024: 3 windows.
    windows = slide_windows(1024, 2048, (1024, 1024), (512, 512))
    assert windows == [(0, 1024, 0, 1024), (0, 1024, 512, 1536), (0, 1024, 1024, 2048)]


def test_slide_windows_last_window_aligned_to_the_border_and_small_images():
    assert slide_windows(100, 50, (64, 64), (48, 48)) == [(0, 64, 0, 50), (36, 100, 0, 50)]
    assert slide_windows(20, 30, (64, 64), (48, 48)) == [(0, 20, 0, 30)]
    for height, width in [(101, 77), (64, 65), (1, 200)]:
        covered = torch.zeros(height, width)
        for y1, y2, x1, x2 in slide_windows(height, width, (32, 40), (17, 40)):
            covered[y1:y2, x1:x2] += 1
        assert covered.min() >= 1


@pytest.mark.parametrize(("crop", "stride"), [((32, 32), (33, 16)), ((0, 32), (1, 1))])
def test_slide_windows_reject_gaps_and_empty_windows(crop, stride):
    with pytest.raises(ValueError, match="stride|positive"):
        slide_windows(64, 64, crop, stride)


def test_slide_equals_whole_when_the_crop_covers_the_image(tiny):
    images = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        whole = tiny.predict(images)
        slide = tiny.predict(images, mode="slide", crop_size=(64, 96), stride=(32, 32))
    assert whole.shape == (2, 3, 50, 70)
    assert torch.equal(slide, whole)


def test_slide_equals_whole_for_a_translation_equivariant_model():
    torch.manual_seed(0)
    model = Segmenter(PixelwiseBackbone(), PixelwiseHead(4, 5)).eval()
    images = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        whole = model.predict(images)
        slide = model.predict(images, mode="slide", crop_size=(16, 24), stride=(7, 10))
    assert torch.allclose(slide, whole, atol=1e-6)


def test_slide_averages_overlapping_windows():
    model = Segmenter(WindowMeanBackbone(), PixelwiseHead(1, 1))
    images = torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(1, 3, 1, 4)
    # Windows [0, 2), [1, 3), [2, 4) have means 0.5, 1.5, 2.5; each pixel averages its windows.
    out = model.predict(images, mode="slide", crop_size=(1, 2), stride=(1, 1))
    assert out.flatten().tolist() == [0.5, 1.0, 2.0, 2.5]


@pytest.mark.parametrize("size", [(29, 29), (45, 67), (33, 130), (96, 64)])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_predict_any_input_size(tiny, size, mode):
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = tiny.predict(images, mode=mode, crop_size=(64, 64), stride=(48, 48))
        resized = tiny.predict(
            images, mode=mode, crop_size=(64, 64), stride=(48, 48), out_size=(40, 50)
        )
    assert logits.shape == (1, 3, *size)
    assert resized.shape == (1, 3, 40, 50)
    assert torch.isfinite(logits).all()


def test_batched_windows_give_the_same_logits(tiny):
    images = torch.randn(2, 3, 70, 90)
    kwargs = {"mode": "slide", "crop_size": (48, 48), "stride": (32, 32)}
    with torch.no_grad():
        one = tiny.predict(images, **kwargs)
        many = tiny.predict(images, window_batch=4, **kwargs)
    assert torch.allclose(one, many, atol=1e-5)


def test_predict_leaves_grad_mode_and_train_mode_to_the_caller():
    model = create_segmenter(ModelConfig(backbone="mit_tiny", num_classes=2))
    images = torch.randn(2, 3, 40, 40)
    out = model.predict(images, mode="slide", crop_size=(32, 32), stride=(16, 16))
    assert out.requires_grad and model.training
    with torch.no_grad():
        assert not model.predict(images).requires_grad


def test_predict_argument_errors(tiny):
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown predict mode 'tiles'; known: whole, slide"):
        tiny.predict(images, mode="tiles")
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        tiny.predict(images, mode="slide")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny.predict(images[0])
