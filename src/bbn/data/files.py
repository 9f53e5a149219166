"""File-backed datasets: `ImageFiles` (image paths, labels, class names) and `FileImages`,
the training / test set that decodes them in DataLoader workers.

`FileImages` offers the trainer the same interface as the in-memory `DeviceImages`
(`train_batches`, `eval_batches`, `__len__`, `labels`): a DataLoader over the epoch's planned
index batches, whose workers decode, crop and flip each one ahead of the step. Every batch's
augmentation draws come from the seed planned with it, so a run is reproducible, an epoch
resumed part-way decodes only the steps it has left, and the images do not depend on the
number of workers.

Unreadable images (missing or corrupt files): in a training batch the image is replaced by
the next readable image of the same class (in the class's file order), so the batch keeps
its size and the sampler's class distribution - BBN pairs the uniform and the reversed
batch element by element, and the reversed sampler's class balance is the point of the
method. A test image is left out of the evaluation (a replacement would count another image
twice). Each is warned about once and listed in RUN/skipped_images.txt; with
`data.strict=true` the first one is an error.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from bbn.config import Config
from bbn.data.augment import Normalize
from bbn.data.sources import ClassLabels
from bbn.data.transforms import ImageReadError, crop_size, crop_transform, read_image
from bbn.errors import BBNError

WARN_LIMIT = 20  # individual warnings; later skips are only listed in the file
MAX_WORKERS = 8

log = logging.getLogger(__name__)


class PathTable:
    """Many paths in two NumPy arrays (UTF-8 bytes and offsets): compact, cheap to send to
    DataLoader workers, and without the per-string reference counts that make forked
    workers copy a Python list of strings page by page."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def from_strings(cls, paths: Sequence[str]) -> "PathTable":
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def take(self, index: Iterable[int]) -> "PathTable":
        return PathTable.from_strings([self[int(i)] for i in index])

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


@dataclass(frozen=True, eq=False)
class ImageFiles(ClassLabels):
    """Image files of one split: paths, int64 labels in [0, C), the C class names, and where
    each image is listed (`origin` formatted with its `entries` value, e.g. "line 12 of
    'train.txt'"; an empty origin when the path says it all)."""

    paths: PathTable
    labels: torch.Tensor
    class_names: list[str]
    entries: np.ndarray
    origin: str = ""

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,) or len(self.entries) != n:
            raise BBNError(f"image files need one int64 label and one entry per path ({n} paths), got "
                           f"{self.labels.dtype} {tuple(self.labels.shape)} and {len(self.entries)} entries")
        self._check_label_range()

    @property
    def channels(self) -> int:
        """Images are decoded as RGB."""
        return 3

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ImageFiles":
        idx = torch.as_tensor(index, dtype=torch.int64)
        return ImageFiles(self.paths.take(idx.tolist()), self.labels[idx], list(self.class_names),
                          self.entries[idx.numpy()], self.origin)

    def where(self, i: int) -> str:
        """Image `i`'s path and the annotation entry that lists it."""
        at = f" ({self.origin.format(int(self.entries[i]))})" if self.origin else ""
        return f"'{self.paths[i]}'{at}"


def default_workers() -> int:
    """DataLoader workers when data.workers is unset: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


class _Batch(NamedTuple):
    """What a worker returns for one planned batch."""

    images: torch.Tensor  # uint8 (B, 3, S, S)
    labels: torch.Tensor  # int64 (B,)
    index: torch.Tensor  # the planned indices (training) or the kept ones (test)
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable images met
    error: str  # "" or why the batch cannot be made (strict mode, a class with no readable image)


class _Decoder(Dataset):
    """Worker side: an item is a whole planned batch `(seed, indices)`; seed None means a
    test batch (center crop, unreadable images left out)."""

    def __init__(self, files: ImageFiles, train_crop: Callable, test_crop: Callable, size: int,
                 strict: bool) -> None:
        self.files = files
        self.train_crop, self.test_crop, self.size, self.strict = train_crop, test_crop, size, strict
        labels = files.labels.numpy()
        self.labels = labels
        self.order = np.argsort(labels, kind="stable")  # image ids grouped by class, in file order
        self.counts = np.bincount(labels, minlength=files.num_classes)
        self.starts = np.cumsum(self.counts) - self.counts
        self.rank = np.empty(len(labels), dtype=np.int64)  # position of each image within its class
        self.rank[self.order] = np.arange(len(labels)) - np.repeat(self.starts, self.counts)
        self.bad: dict[int, str] = {}  # unreadable images this worker has met

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, i: int, skipped: list[tuple[str, str]]) -> torch.Tensor | None:
        if i in self.bad:
            return None
        try:
            return read_image(self.files.paths[i])
        except ImageReadError as err:
            reason = re.sub(r"\s+", " ", err.reason)
            self.bad[i] = reason
            skipped.append((err.path, reason))
            return None

    def _strict_error(self, i: int) -> str:
        return (f"image {self.files.where(i)} cannot be read: {self.bad[i]}; replace or remove it, "
                f"or set data.strict=false to skip unreadable images")

    def _train_image(self, i: int, skipped: list[tuple[str, str]]) -> tuple[torch.Tensor | None, str]:
        """Image i, or the next readable image of its class."""
        c = int(self.labels[i])
        n, start, pos = int(self.counts[c]), int(self.starts[c]), int(self.rank[i])
        for step in range(n):
            j = int(self.order[start + (pos + step) % n])
            image = self._read(j, skipped)
            if image is not None:
                return image, ""
            if self.strict:
                return None, self._strict_error(j)
        name = self.files.class_names[c]
        return None, (f"no image of class {c} ('{name}') can be read (e.g. {self.files.where(i)}: "
                      f"{self.bad.get(i, 'unreadable')}); fix the files or check data.root")

    def __getitem__(self, item: tuple[int | None, int, np.ndarray]) -> _Batch:
        if get_worker_info() is not None:  # a worker: torch already runs it on one thread
            return self._make(*item)
        # data.workers=0: per-image work is too small to split across threads (and contends
        # with them when the cores are busy), so it runs on one, as in a worker
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._make(*item)
        finally:
            torch.set_num_threads(threads)

    def _make(self, seed: int | None, index: np.ndarray) -> _Batch:
        skipped: list[tuple[str, str]] = []
        images: list[torch.Tensor] = []
        kept: list[int] = []
        if seed is None:
            for i in index.tolist():
                image = self._read(i, skipped)
                if image is None:
                    if self.strict and i in self.bad:
                        return self._failed(index, skipped, self._strict_error(i))
                    continue
                kept.append(i)
                images.append(self.test_crop(image))
            return self._batch(images, np.asarray(kept, dtype=np.int64), skipped)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            for i in index.tolist():
                image, error = self._train_image(i, skipped)
                if image is None:
                    return self._failed(index, skipped, error)
                images.append(self.train_crop(image))
        return self._batch(images, index, skipped)

    def _batch(self, images: list[torch.Tensor], index: np.ndarray, skipped: list[tuple[str, str]]) -> _Batch:
        stacked = torch.stack(images) if images else torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return _Batch(stacked, torch.from_numpy(self.labels[index]), torch.from_numpy(index), skipped, "")

    def _failed(self, index: np.ndarray, skipped: list[tuple[str, str]], error: str) -> _Batch:
        return _Batch(torch.empty((0, 3, self.size, self.size), dtype=torch.uint8),
                      torch.empty(0, dtype=torch.int64), torch.from_numpy(index), skipped, error)


class _Plan:
    """The batches a loader decodes, replaceable between epochs (so persistent workers serve
    every epoch)."""

    def __init__(self, items: list[tuple[int | None, np.ndarray]] | None = None) -> None:
        self.items = items or []

    def __iter__(self) -> Iterator[tuple[int | None, np.ndarray]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class FileImages:
    """Image files decoded in `data.workers` DataLoader workers: random resized crop + flip
    for training batches, resize + center crop for test batches (SPEC §4), uint8 until the
    compute device, where they are normalised."""

    def __init__(self, files: ImageFiles, cfg: Config, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 split: str = "train", skip_log: Path | None = None) -> None:
        self.files = files
        self.labels = files.labels.to(device)
        self.normalize = Normalize(mean, std, device)
        self.device, self.memory_format, self.split = device, memory_format, split
        self.workers = cfg.data.workers if cfg.data.workers is not None else default_workers()
        self._decoder = _Decoder(files, crop_transform(cfg.data, True, cfg.augment.flip),
                                 crop_transform(cfg.data, False), crop_size(cfg.data), cfg.data.strict)
        self._plan = _Plan()
        self._train_loader: DataLoader | None = None
        self._eval_loaders: dict[int, DataLoader] = {}
        self.skipped: dict[str, str] = {}
        self.skip_log = skip_log  # every skipped image is appended there (the run's skipped_images.txt)

    def __len__(self) -> int:
        return len(self.files)

    def _loader(self, plan: _Plan) -> DataLoader:
        kwargs: dict[str, Any] = {}
        if self.workers:
            kwargs.update(persistent_workers=True, prefetch_factor=2)
        return DataLoader(self._decoder, batch_size=None, sampler=plan, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", **kwargs)

    def train_batches(self, steps: Sequence[Sequence[tuple[torch.Tensor, int]]]
                      ) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per step, each stream's images decoded, cropped and flipped in the workers (the
        draws from the stream's seed; CIFAR's crop padding does not apply) and normalised on
        the device. The workers start on the first batch when the loop asks for it."""
        self._plan.items = [(seed, idx.cpu().numpy().astype(np.int64, copy=True))
                            for step in steps for idx, seed in step]
        if self._train_loader is None:
            self._train_loader = self._loader(self._plan)
        decoded = iter(self._train_loader)
        for step in steps:
            yield [self._received(next(decoded), evaluating=False) for _ in step]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, center-cropped batches in order, without the unreadable images."""
        if batch_size not in self._eval_loaders:
            starts = range(0, len(self), batch_size)
            plan = _Plan([(None, np.arange(s, min(s + batch_size, len(self)), dtype=np.int64)) for s in starts])
            self._eval_loaders[batch_size] = self._loader(plan)
        for batch in self._eval_loaders[batch_size]:
            x, y = self._received(batch, evaluating=True)
            if len(y):
                yield x, y

    def _received(self, batch: _Batch, evaluating: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A worker's batch on the device, normalised, after noting its unreadable images."""
        self._note(batch, evaluating)
        x = batch.images.to(self.device, non_blocking=True)
        x = self.normalize(x).contiguous(memory_format=self.memory_format)
        return x, batch.labels.to(self.device, non_blocking=True)

    def _note(self, batch: _Batch, evaluating: bool) -> None:
        if batch.error:  # the error alone: in strict mode the image was not skipped, the run stops
            raise BBNError(batch.error)
        for path, reason in batch.skipped:
            self._skip(path, reason, evaluating)

    def _skip(self, path: str, reason: str, evaluating: bool) -> None:
        if path in self.skipped:
            return
        self.skipped[path] = reason
        if self.skip_log is not None:
            with open(self.skip_log, "a", encoding="utf-8") as f:
                f.write(f"{self.split}\t{path}\t{reason}\n")
        listed = f"; listed in {self.skip_log}" if self.skip_log is not None else ""
        n = len(self.skipped)
        if n <= WARN_LIMIT:
            fix = "left out of the evaluation" if evaluating else "replaced by another image of its class"
            log.warning(f"bbn: warning: skipped unreadable {self.split} image {n}: '{path}' ({reason}), "
                        f"{fix}{listed}")
        elif n == WARN_LIMIT + 1:
            log.warning(f"bbn: warning: more than {WARN_LIMIT} unreadable {self.split} images; further ones are "
                        f"not warned about{listed}")
