"""Detection data: read Ultralytics-style YOLO data sets, hold them in memory, serve batches.

A data set is a `data.yaml` with `path` (optional root, relative to the yaml's folder), `train`
and `val` (folders of images, text files listing images, or lists of either) and `names` (a list
or an `{index: name}` mapping). Each image's labels are found by the Ultralytics rule (the last
`/images/` path component becomes `/labels/`, the suffix `.txt`): one `class cx cy w h` line per
object, normalised to [0, 1]; no label file means no objects. `data="shapes"` is the built-in
data set (`trainer.shapes`).

A worker loads a data set once (`load_data`) and trains many trials from it: every split is
decoded and letterboxed up front into one uint8 tensor, so serving a batch is an index, a flip
and a colour transform on tensors, far faster than the model trains. On a GPU that tensor is
kept on the device (`on_device`) and batches are made there.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor
from torchvision.ops import box_convert

from trainer.augment import AugmentSpec, augment_batch, mosaic_affine
from trainer.letterbox import Letterbox, read_letterboxed
from trainer.shapes import shapes_yaml

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".mpo"})
BOX_TOLERANCE = 0.01  # normalised coordinates may overshoot [0, 1] by this much (rounding)
_MAX_REASONS = 5  # reasons quoted in the skip warning
# The share of a GPU's free memory a data set's images may take there (`on_device`): 1,200
# images at 128 px are 59 MB; 10,000 at 640 px are 12 GB, which stay on the host of a 24 GB GPU.
DEVICE_SHARE = 0.25

Split = Literal["train", "val"]


class DataError(ValueError):
    """Bad data: the message names the file (and the line, for labels)."""


@dataclass(frozen=True)
class DataSpec:
    """What a `data.yaml` says: class names and the image files of each split."""

    names: tuple[str, ...]
    train: list[Path]
    val: list[Path]
    yaml_path: Path


def resolve_data(data: str) -> Path:
    """The `data.yaml` for `data`: `"shapes"` (built in, generated on first use) or a path to a
    `data.yaml` (or to a folder holding one)."""
    if data == "shapes":
        return shapes_yaml()
    path = Path(data).expanduser()
    if path.is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if not path.is_file():
        raise DataError(f"data must be 'shapes' or the path of a data.yaml, but got data={data!r}")
    return path


def read_data_yaml(path: Path | str) -> DataSpec:
    """Read a `data.yaml` and list the images of its `train` and `val` splits."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the data set description: {exc}") from exc
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a mapping with train, val and names, got {content!r}")
    names = _names(path, content)
    root = Path(str(content.get("path") or ".")).expanduser()
    if not root.is_absolute():
        root = path.parent / root
    splits = {
        split: _list_images(path, root, split, content.get(split)) for split in ("train", "val")
    }
    return DataSpec(names, splits["train"], splits["val"], path)


def _names(path: Path, content: dict[str, Any]) -> tuple[str, ...]:
    raw = content.get("names")
    if isinstance(raw, dict):
        keys = list(raw)
        if not all(isinstance(k, int) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise DataError(
                f"{path}: names keys must be the indices 0..{len(keys) - 1}, but got {keys}"
            )
        names = tuple(str(raw[i]) for i in range(len(raw)))
    elif isinstance(raw, list):
        names = tuple(str(n) for n in raw)
    else:
        raise DataError(
            f"{path}: names must be a list or an {{index: name}} mapping, but got {raw!r}"
        )
    if not names:
        raise DataError(f"{path}: names is empty")
    nc = content.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc={nc} but names has {len(names)} entries")
    return names


def _list_images(yaml_path: Path, root: Path, split: str, entry: object) -> list[Path]:
    if entry is None:
        raise DataError(f"{yaml_path}: no '{split}' entry (a folder of images or a .txt list)")
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        source = Path(str(item)).expanduser()
        source = source if source.is_absolute() else root / source
        if source.is_dir():
            found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file() and source.suffix.lower() == ".txt":
            found = _read_list(source, root)
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            found = [source]
        else:
            raise DataError(f"{yaml_path}: {split} image folder or list not found: {source}")
        if not found:
            raise DataError(f"{yaml_path}: {split} split is empty: no images in {source}")
        images += found
    return images


def _read_list(list_file: Path, root: Path) -> list[Path]:
    """Image paths listed one per line; `./x` is relative to the list's folder (as Ultralytics),
    other relative paths to the data set root."""
    images = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        if not p.is_absolute():
            p = list_file.parent / line[2:] if line.startswith("./") else root / p
        images.append(p)
    return images


def label_path(image: Path) -> Path:
    """The label file of an image: the last `images` folder becomes `labels`, suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, num_classes: int) -> Tensor:
    """Labels `[n, 5]` (cls, cx, cy, w, h), normalised and clipped to [0, 1]; `[0, 5]` when the
    file is missing. Raises DataError naming the file and line of the first bad line."""
    if not path.is_file():
        return torch.zeros((0, 5))
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read labels: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(_parse_label(path, lineno, line, num_classes))
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def _parse_label(path: Path, lineno: int, line: str, num_classes: int) -> list[float]:
    where = f"{path}:{lineno}"
    fields = line.split()
    if len(fields) != 5:
        raise DataError(f"{where}: expected 5 numbers 'class cx cy w h', but got {line.strip()!r}")
    try:
        cls, cx, cy, w, h = (float(f) for f in fields)
    except ValueError:
        raise DataError(
            f"{where}: expected 5 numbers 'class cx cy w h', but got {line.strip()!r}"
        ) from None
    if not all(math.isfinite(v) for v in (cls, cx, cy, w, h)):
        raise DataError(f"{where}: non-finite value in {line.strip()!r}")
    if not cls.is_integer() or not 0 <= cls < num_classes:
        raise DataError(
            f"{where}: class index must be an integer in 0..{num_classes - 1} (names), "
            f"but got {fields[0]!r}"
        )
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    lo, hi = -BOX_TOLERANCE, 1 + BOX_TOLERANCE
    if w <= 0 or h <= 0 or min(x1, y1) < lo or max(x2, y2) > hi:
        raise DataError(
            f"{where}: box outside the image (normalised cx cy w h must give w, h > 0 and "
            f"corners in [0, 1]), but got cx={cx}, cy={cy}, w={w}, h={h}"
        )
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    return [cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


@dataclass(frozen=True, eq=False)
class DetectionSplit:
    """One split, letterboxed to `imgsz` and held in memory.

    `images` is uint8 `[N, 3, imgsz, imgsz]`; `boxes[i]` is float32 `[n, 5]` = (cls, x1, y1, x2,
    y2) in letterboxed pixels; `image_ids[i]` is `int(stem)` for numeric stems, else the stem;
    `orig_sizes[i]` is the original `(h, w)`; `letterboxes[i]` maps boxes back to it.
    """

    name: str
    imgsz: int
    images: Tensor
    boxes: list[Tensor]
    image_ids: list[int | str]
    paths: list[Path]
    orig_sizes: list[tuple[int, int]]
    letterboxes: list[Letterbox]

    def __len__(self) -> int:
        return len(self.paths)

    def to_original(self, boxes_xyxy: Tensor, index: int) -> Tensor:
        """Boxes `[n, 4]` in letterboxed pixels of sample `index` -> original image pixels."""
        return self.letterboxes[index].to_original(boxes_xyxy, self.orig_sizes[index])

    def original_boxes(self, index: int) -> Tensor:
        """Ground truth of sample `index` as `[n, 5]` (cls, x1, y1, x2, y2) in original pixels."""
        b = self.boxes[index]
        return torch.cat([b[:, :1], self.to_original(b[:, 1:], index)], dim=1)


@dataclass(frozen=True, eq=False)
class DetectionData:
    """A whole data set in memory: class names and both splits."""

    names: tuple[str, ...]
    train: DetectionSplit
    val: DetectionSplit
    # `on_device`'s copies of this data set, by device: made once, for every run given it
    device_copies: dict[str, DetectionData] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def image_bytes(self) -> int:
        return self.train.images.nbytes + self.val.images.nbytes


def on_device(data: DetectionData, device: torch.device) -> DetectionData:
    """`data` with its images (uint8) held on `device` when that is a GPU they fit on, else
    `data` itself: batches are then cut, augmented and fed on the device (trainer/augment.py),
    and no image crosses from the host in an iteration. Boxes and everything else stay on the
    host. The copy is made once per data set and device (a worker's trials share it) and only
    when the images take at most `DEVICE_SHARE` of the device's free memory, so a large data
    set leaves room for the model (and a pack of trials); then it stays on the host, as on a
    CPU."""
    if device.type != "cuda" or data.train.images.device == device:
        return data
    key = str(device)
    if key not in data.device_copies:
        free, _ = torch.cuda.mem_get_info(device)
        if fits_on_device(data.image_bytes, free):
            copy = DetectionData(
                data.names,
                replace(data.train, images=data.train.images.to(device)),
                replace(data.val, images=data.val.images.to(device)),
            )
            log.info(
                "data set on %s: %.0f MB of images (%.0f GB free)",
                device, data.image_bytes / 1e6, free / 1e9,
            )  # fmt: skip
        else:
            copy = data
            log.info(
                "data set stays on the host: its %.0f MB of images are over %.0f%% of the "
                "%.0f GB free on %s",
                data.image_bytes / 1e6, DEVICE_SHARE * 100, free / 1e9, device,
            )  # fmt: skip
        data.device_copies[key] = copy
    return data.device_copies[key]


def fits_on_device(image_bytes: int, free_bytes: int, share: float = DEVICE_SHARE) -> bool:
    """Whether a data set's images may live on a device with `free_bytes` free."""
    return image_bytes <= share * free_bytes


def load_data(data: str, imgsz: int, skip_bad: bool = False) -> DetectionData:
    """Resolve `data` ("shapes" or a data.yaml path), read it and load both splits."""
    spec = read_data_yaml(resolve_data(data))
    return DetectionData(
        spec.names,
        load_split(spec, "train", imgsz, skip_bad),
        load_split(spec, "val", imgsz, skip_bad),
    )


def check_data(data: str) -> DataSpec:
    """Read `data`'s description and every label file, without decoding an image.

    Cheap (text only): `tune launch` runs it before it creates a study, so that a missing folder,
    a missing listed image or a malformed label line is one `DataError` there rather than every
    worker failing as it starts.
    """
    spec = read_data_yaml(resolve_data(data))
    for image in (*spec.train, *spec.val):
        if not image.is_file():
            raise DataError(f"{spec.yaml_path}: listed image not found: {image}")
        read_labels(label_path(image), len(spec.names))
    return spec


def load_split(spec: DataSpec, split: Split, imgsz: int, skip_bad: bool) -> DetectionSplit:
    """Decode, check and letterbox every image of `split` (threads; PIL releases the GIL).

    A bad sample (unreadable image, bad label line) raises DataError, or with `skip_bad` is
    left out with one warning for the whole split; a split with no good sample always raises.
    Memory is `N * 3 * imgsz**2` bytes: 59 MB for 1200 images at 128 px, 12 GB for 10k at 640.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', but got {split=}")
    paths: list[Path] = spec.train if split == "train" else spec.val
    images = torch.empty((len(paths), 3, imgsz, imgsz), dtype=torch.uint8)
    num_classes = len(spec.names)

    def load(i: int) -> tuple[Tensor, tuple[int, int], Letterbox] | str:
        try:
            labels = read_labels(label_path(paths[i]), num_classes)
        except DataError as exc:
            return str(exc)
        try:
            pixels, orig_hw, box = read_letterboxed(paths[i], imgsz)
        except Exception as exc:  # PIL raises many kinds; each is "unreadable"
            return f"{paths[i]}: unreadable image: {type(exc).__name__}: {exc}"
        images[i] = torch.from_numpy(pixels).permute(2, 0, 1)
        h, w = orig_hw
        xyxy = box_convert(labels[:, 1:], "cxcywh", "xyxy") * labels.new_tensor([w, h, w, h])
        return torch.cat([labels[:, :1], box.to_letterbox(xyxy)], dim=1), orig_hw, box

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(load, range(len(paths))))
    reasons = [r for r in results if isinstance(r, str)]
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    where = f"{spec.yaml_path}: {split}"
    if reasons and not good:
        raise DataError(f"{where}: all {len(paths)} images are bad; first: {reasons[0]}")
    if reasons and not skip_bad:
        more = f" (and {len(reasons) - 1} more bad samples)" if len(reasons) > 1 else ""
        raise DataError(f"{reasons[0]}{more}; skip_bad=True leaves bad samples out")
    if reasons:
        log.warning(
            "%s: skipped %d of %d images with bad data; first: %s",
            where,
            len(reasons),
            len(paths),
            "; ".join(reasons[:_MAX_REASONS]),
        )
        images = images[good]
    loaded = [r for r in results if not isinstance(r, str)]
    kept = [paths[i] for i in good]
    ids = [_image_id(p) for p in kept]
    if len(set(ids)) != len(ids):
        first = next(p for p, i in zip(kept, ids, strict=True) if ids.count(i) > 1)
        raise DataError(f"{where}: image ids (file stems) must be unique, but {first} repeats")
    return DetectionSplit(
        name=split,
        imgsz=imgsz,
        images=images,
        boxes=[r[0] for r in loaded],
        image_ids=ids,
        paths=kept,
        orig_sizes=[r[1] for r in loaded],
        letterboxes=[r[2] for r in loaded],
    )


def _image_id(path: Path) -> int | str:
    return int(path.stem) if path.stem.isdigit() else path.stem


def iterate_batches(
    split: DetectionSplit,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool | AugmentSpec,
    generator: torch.Generator,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches `(images, targets, indices)` of a split, deterministic given `generator`.

    `images` float32 `[B, 3, S, S]` in [0, 1], on the device that holds the split's images;
    `targets` `[M, 6]` = (batch_index, cls, cx, cy, w, h) normalised to the letterboxed image
    and `indices` `[B]`, the samples' positions in `split` (with mosaic, the image whose tile
    is top-left), on the host; `generator` is the host's. With `shuffle` (training) the last partial
    batch is dropped, unless the split is smaller than one batch; without it (evaluation) every
    sample is served once, in order. `augment=True` means `AugmentSpec()` (flip and HSV only).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, but got {batch_size=}")
    spec = AugmentSpec() if augment is True else augment or None
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if shuffle and n >= batch_size else n
    size = split.imgsz
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        if spec is not None and (spec.mosaic > 0 or spec.scale > 0 or spec.translate > 0):
            use_mosaic = spec.mosaic > 0 and float(torch.rand(1, generator=generator)) < spec.mosaic
            pixels, batch_index, labels = mosaic_affine(
                split.images, split.boxes, indices, generator,
                mosaic=use_mosaic, scale=spec.scale, translate=spec.translate,
            )  # fmt: skip
        else:
            pixels = split.images.index_select(0, indices.to(split.images.device))
            boxes = [split.boxes[i] for i in indices.tolist()]
            counts = torch.tensor([len(b) for b in boxes])
            batch_index = torch.repeat_interleave(torch.arange(len(boxes)), counts)
            labels = torch.cat(boxes) if boxes else torch.zeros((0, 5))
        cls, xyxy = labels[:, 0], labels[:, 1:]
        if spec is not None:
            images, xyxy = augment_batch(
                pixels, batch_index, xyxy, generator,
                flip_p=spec.fliplr, hue=spec.hsv_h, saturation=spec.hsv_s, value=spec.hsv_v,
            )  # fmt: skip
        else:
            images = pixels.float().div_(255)
        cxcywh = box_convert(xyxy, "xyxy", "cxcywh") / size
        targets = torch.cat([batch_index[:, None].float(), cls[:, None], cxcywh], dim=1)
        yield images, targets, indices
