"""Datasets (GTA5, Synthia, Cityscapes, image folders, the demo domains), transforms, label
conversion with class statistics, layout checks, and the procedural demo generator."""

from cluda_deploy.data.check import CheckItem, check_datasets, format_check_report
from cluda_deploy.data.datasets import (
    DATASETS,
    CityscapesDataset,
    DatasetLayoutError,
    FolderDataset,
    GTADataset,
    SegmentationDataset,
    SynthiaDataset,
    create_dataset,
    dataset_names,
    default_root,
    worker_init_fn,
)
from cluda_deploy.data.demo import generate_demo_domains
from cluda_deploy.data.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    LabelFormatError,
    read_color_label,
    read_image,
    read_label_ids,
    read_synthia_label,
    read_train_ids,
)
from cluda_deploy.data.prepare import ClassStats, load_class_stats, prepare_dataset
from cluda_deploy.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomFlip,
    ResizeKeepRatio,
    reseed,
    train_transform,
    val_transform,
)

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "CheckItem",
    "CityscapesDataset",
    "ClassStats",
    "Compose",
    "DatasetLayoutError",
    "FolderDataset",
    "GTADataset",
    "ImageReadError",
    "LabelFormatError",
    "Normalize",
    "RandomCrop",
    "RandomFlip",
    "ResizeKeepRatio",
    "SegmentationDataset",
    "SynthiaDataset",
    "check_datasets",
    "create_dataset",
    "dataset_names",
    "default_root",
    "format_check_report",
    "generate_demo_domains",
    "load_class_stats",
    "prepare_dataset",
    "read_color_label",
    "read_image",
    "read_label_ids",
    "read_synthia_label",
    "read_train_ids",
    "reseed",
    "train_transform",
    "val_transform",
    "worker_init_fn",
]
