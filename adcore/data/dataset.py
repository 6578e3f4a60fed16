"""A torch Dataset over ``Sample`` lists, so every method gets images, masks and labels the same way."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adcore.data.mvtec import Sample, read_image, read_mask
from adcore.data.transforms import ImageTransform


class ImageDataset(Dataset):
    """Items: {"image": 3xSxS, "mask": SxS float (zeros without a mask), "label": int, "index": i, "path": str}."""

    def __init__(self, samples: list[Sample], transform: ImageTransform):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        image = read_image(sample.path)
        if sample.mask_path is not None:
            height, width = image.shape[:2]
            mask = self.transform.mask(read_mask(sample.mask_path, (width, height)))
        else:
            size = self.transform.output_size
            mask = torch.zeros(size, size, dtype=torch.float32)
        return {"image": self.transform(image), "mask": mask, "label": int(sample.label), "index": int(i),
                "path": str(sample.path)}


def _seed_worker(worker_id: int) -> None:
    # Workers get distinct but reproducible numpy seeds (torch seeds them from the loader's generator).
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(samples: list[Sample], transform: ImageTransform, batch_size: int, num_workers: int = 0,
                shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader that gives the same batches for the same seed."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(ImageDataset(samples, transform), batch_size=int(batch_size), shuffle=shuffle,
                      num_workers=int(num_workers), generator=generator, worker_init_fn=_seed_worker,
                      drop_last=False, persistent_workers=False)
