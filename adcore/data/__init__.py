"""Datasets in MVTec AD layout: loading and validation, preprocessing, torch datasets, a procedural demo set."""

from adcore.data.dataset import ImageDataset, make_loader
from adcore.data.demo import DEMO_CATEGORIES, generate_demo_dataset
from adcore.data.mvtec import (
    IMAGE_SUFFIXES,
    Category,
    Sample,
    image_size,
    list_categories,
    load_category,
    read_image,
    read_mask,
    split_seen_anomalies,
    train_val_split,
)
from adcore.data.transforms import ImageTransform

__all__ = [
    "DEMO_CATEGORIES",
    "IMAGE_SUFFIXES",
    "Category",
    "ImageDataset",
    "ImageTransform",
    "Sample",
    "generate_demo_dataset",
    "image_size",
    "list_categories",
    "load_category",
    "make_loader",
    "read_image",
    "read_mask",
    "split_seen_anomalies",
    "train_val_split",
]
