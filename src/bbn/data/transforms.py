"""Images on disk -> tensors (SPEC §4, the iNaturalist transforms).

Training: RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip;
test: resize the shorter side to `resize` (256) and center-crop `size` (224); ImageNet
mean/std. The geometric part works on uint8 (3, H, W) tensors, so DataLoader workers hand
uint8 batches to the main process (a quarter of the float bytes to pin and copy) and the
normalisation runs on the compute device, as for the in-memory sources.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision without its image decoders: Pillow decodes everything
    decode_image = None

from bbn.config import DEFAULT_CROP_SIZE, Config, DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SPEC §4: crop 224 of the image whose shorter side is 256; RandomResizedCrop's defaults.
DEFAULT_SIZE = DEFAULT_CROP_SIZE
RESIZE_RATIO = 256 / 224
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


class ImageReadError(Exception):
    """A file that is missing or is not a readable image; `reason` says which."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}': {reason}")
        self.path = path
        self.reason = reason


# The most pixels an image may declare: Pillow's default limit (about 89.5 million, a
# 9459 x 9459 square). A 190 KB PNG can declare 14000 x 14000 pixels (4.4 GB decoded).
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def _pillow_reason(exc: Exception, path: str) -> str:
    reason = str(exc).splitlines()[0].replace(f" {path!r}", "") if str(exc) else type(exc).__name__
    return f"not a readable image ({reason[:120]})"


def _probe(path: str) -> tuple[int, int, bool]:
    """(width, height, animated) from the image file's header, read by Pillow without
    decoding a pixel; ImageReadError as `image_size` says."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # an image above Pillow's own limit is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                (width, height), animated = im.size, bool(getattr(im, "is_animated", False))
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as exc:  # above twice Pillow's limit: refused while opening
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "its header's size"
        raise ImageReadError(path, f"too large to decode ({size}, more than {MAX_IMAGE_PIXELS:,})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ImageReadError(path, _pillow_reason(exc, path)) from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(path, f"too large to decode ({width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,})")
    return width, height, animated


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as the image file's header declares them, read by Pillow without
    decoding a pixel. ImageReadError for a missing file, a file that is no image, or one
    declaring more than MAX_IMAGE_PIXELS pixels."""
    width, height, _ = _probe(path)
    return width, height


def read_image(path: str) -> torch.Tensor:
    """The image at `path` as uint8 RGB (3, H, W). Its header is read first (`image_size`),
    so no decoder ever runs on an image too large to decode; then torchvision's decoder, and
    Pillow for the formats it lacks (BMP, TIFF, ...) and for animations (their first frame:
    torchvision would decode every frame). Raises ImageReadError for a missing, broken or
    too large file."""
    _, _, animated = _probe(path)
    if decode_image is not None and not animated:
        try:
            with warnings.catch_warnings():  # torchvision 0.29 announces its decoders' deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_image(path, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError):
            pass
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ImageReadError(path, _pillow_reason(exc, path)) from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def crop_size(cfg: DataConfig) -> int:
    """The side of the square images the network sees (data.image_size, default 224)."""
    return cfg.image_size if cfg.image_size is not None else DEFAULT_SIZE


def resize_size(cfg: DataConfig) -> int:
    """The shorter side test images are resized to before the center crop
    (data.resize_size, default image_size * 256/224: 256 for 224)."""
    return cfg.resize_size if cfg.resize_size is not None else round(crop_size(cfg) * RESIZE_RATIO)


def crop_transform(cfg: DataConfig, train: bool, flip: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, H, W) -> uint8 (3, S, S): the random resized crop (+ flip) of training, or
    the resize + center crop of testing. Random draws use torch's global generator."""
    size = crop_size(cfg)
    if train:
        steps: list[Callable] = [v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)
    return v2.Compose([v2.Resize(resize_size(cfg), antialias=True), v2.CenterCrop(size)])


def image_transform(cfg: Config, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, H, W) -> normalised float32 (3, S, S) as the network of a run with config
    `cfg` sees it: `crop_transform` then scaling to 0..1 and the mean/std normalisation
    (augment.mean/std, else ImageNet's). Use with `read_image` to feed a trained model."""
    mean = tuple(cfg.augment.mean) if cfg.augment.mean is not None else IMAGENET_MEAN
    std = tuple(cfg.augment.std) if cfg.augment.std is not None else IMAGENET_STD
    return v2.Compose([crop_transform(cfg.data, train, cfg.augment.flip), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])
