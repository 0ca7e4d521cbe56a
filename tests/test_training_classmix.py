"""ClassMix: class choice (with the void quirk), masks and mixing (research/cluda.md 2.6)."""

from __future__ import annotations

import torch

from training.classmix import choose_mix_classes, class_mask, class_masks, mix, num_mix_classes


def test_half_of_the_classes_rounded_up():
    assert [num_mix_classes(n) for n in (1, 2, 3, 4, 5, 19, 20)] == [1, 1, 2, 2, 3, 10, 10]


def test_classes_come_from_the_whole_batch_including_void():
    labels = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [255, 255]]])  # image 1 has classes 2, 255
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        chosen = choose_mix_classes(labels, gen)
        assert len(chosen) == 2 and len(set(chosen.tolist())) == 2
        assert set(chosen.tolist()) <= {0, 1, 2, 255}
        seen |= set(chosen.tolist())
    assert seen == {0, 1, 2, 255}  # void is a candidate (DAFormer keeps this on purpose)


def test_class_mask_hand_values():
    label = torch.tensor([[0, 1, 2], [255, 1, 0]])
    assert class_mask(label, torch.tensor([1, 255])).tolist() == [[0, 1, 0], [1, 1, 0]]


def test_masks_are_per_sample_labels_in_the_chosen_classes():
    torch.manual_seed(3)
    labels = torch.randint(0, 4, (2, 5, 5))
    masks = class_masks(labels)
    assert masks.shape == (2, 5, 5)
    for label, m in zip(labels, masks, strict=True):
        pasted = set(label[m.bool()].tolist())
        kept = set(label[~m.bool()].tolist())
        assert not pasted & kept  # a class is pasted whole or not at all
        assert len(pasted) <= 2  # two of the four classes of the batch


def test_mix_images_labels_and_weights():
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    src = torch.ones(1, 3, 2, 2)
    tgt = torch.zeros(1, 3, 2, 2)
    assert mix(mask, src, tgt)[0, 2].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    src_lbl = torch.tensor([[[5, 5], [5, 255]]])
    tgt_lbl = torch.tensor([[[7, 7], [7, 7]]])
    out = mix(mask, src_lbl, tgt_lbl)
    assert out.dtype == torch.int64 and out.tolist() == [[[5, 7], [7, 255]]]
    weight = mix(mask, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.3))
    torch.testing.assert_close(weight, torch.tensor([[[1.0, 0.3], [0.3, 1.0]]]))
