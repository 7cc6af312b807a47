"""Reading Ultralytics-style data sets, bad data, letterboxing and batches."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import shapes
from trainer.augment import AugmentSpec
from trainer.data import (
    DEVICE_SHARE,
    DataError,
    DetectionSplit,
    augment_batch,
    fits_on_device,
    iterate_batches,
    label_path,
    load_data,
    load_split,
    on_device,
    read_data_yaml,
    resolve_data,
)
from trainer.letterbox import PAD_VALUE, letterbox_geometry

# (width, height, labels): labels are YOLO lines "cls cx cy w h"
SAMPLES: dict[str, tuple[int, int, list[str]]] = {
    "000001": (64, 32, ["0 0.5 0.5 0.25 0.5", "1 0.125 0.25 0.25 0.5"]),
    "000002": (32, 64, ["1 0.5 0.75 1.0 0.5"]),
    "cat": (48, 48, []),
}


def _write_image(path: Path, w: int, h: int, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)


def _make_dataset(root: Path, samples: dict[str, tuple[int, int, list[str]]] = SAMPLES) -> None:
    for split in ("train", "val"):
        for stem, (w, h, lines) in samples.items():
            _write_image(root / "images" / split / f"{stem}.png", w, h)
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            if lines:  # "cat" has no label file at all: no objects
                label.write_text("\n".join(lines) + "\n")


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    _make_dataset(tmp_path / "ds")
    return _write_yaml(
        tmp_path / "ds" / "data.yaml",
        "train: images/train\nval: images/val\nnames: [thing, other]\n",
    )


def test_folders_and_list_names(dataset: Path) -> None:
    spec = read_data_yaml(dataset)
    assert spec.names == ("thing", "other")
    assert [p.name for p in spec.train] == ["000001.png", "000002.png", "cat.png"]
    assert spec.val[0] == dataset.parent / "images" / "val" / "000001.png"
    assert label_path(spec.val[0]) == dataset.parent / "labels" / "val" / "000001.txt"


def test_txt_lists_dict_names_and_path_root(tmp_path: Path) -> None:
    _make_dataset(tmp_path / "root")
    (tmp_path / "root" / "train.txt").write_text(
        "./images/train/000002.png\nimages/train/000001.png\n\n"
    )
    lists = tmp_path / "root" / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text(
        f"./../images/val/cat.png\n{tmp_path}/root/images/val/000001.png\n"
    )
    yaml_path = _write_yaml(
        tmp_path / "data.yaml",
        "path: root\ntrain: train.txt\nval: lists/val.txt\nnames:\n  1: other\n  0: thing\n",
    )
    spec = read_data_yaml(yaml_path)
    assert spec.names == ("thing", "other")
    assert [p.name for p in spec.train] == ["000002.png", "000001.png"]
    assert [p.resolve().name for p in spec.val] == ["cat.png", "000001.png"]
    data = load_split(spec, "val", 32, skip_bad=False)
    assert data.image_ids == ["cat", 1]
    assert [len(b) for b in data.boxes] == [0, 2]


def test_resolve_data(tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data(str(dataset)) == dataset
    assert resolve_data(str(dataset.parent)) == dataset  # a folder holding data.yaml
    with pytest.raises(DataError, match=r"nope\.yaml"):
        resolve_data(str(tmp_path / "nope.yaml"))
    monkeypatch.setenv("TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes, "N_TRAIN", 6)
    monkeypatch.setattr(shapes, "N_VAL", 3)
    data = load_data("shapes", 64)
    assert data.names == shapes.NAMES
    assert (len(data.train), len(data.val)) == (6, 3)
    assert data.train.images.shape == (6, 3, 64, 64)
    assert data.val.image_ids == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: images/nowhere\nval: images/val\nnames: [a]\n", "train image folder or list not"),
        ("train: images/train\nval: missing.txt\nnames: [a]\n", "missing.txt"),
        ("train: images/train\nnames: [a]\n", "no 'val' entry"),
        ("train: images/empty\nval: images/val\nnames: [a]\n", "train split is empty"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", "indices 0..1"),
        ("train: images/train\nval: images/val\nnames: 3\n", "names must be a list"),
        ("train: images/train\nval: images/val\nnames: [a]\nnc: 2\n", "nc=2"),
        ("- just a list\n", "expected a mapping"),
        ("train: [unclosed\n", "cannot read"),
    ],
)
def test_bad_yaml_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    _make_dataset(tmp_path)
    (tmp_path / "images" / "empty").mkdir()
    yaml_path = _write_yaml(tmp_path / "data.yaml", text)
    with pytest.raises(DataError, match=message) as err:
        read_data_yaml(yaml_path)
    assert str(yaml_path) in str(err.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 5 numbers"),
        ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 numbers"),
        ("zero 0.5 0.5 0.2 0.2", "expected 5 numbers"),
        ("2 0.5 0.5 0.2 0.2", "class index must be an integer in 0..1"),
        ("-1 0.5 0.5 0.2 0.2", "class index"),
        ("0.5 0.5 0.5 0.2 0.2", "class index"),
        ("0 0.95 0.5 0.2 0.2", "box outside the image"),
        ("0 0.5 0.5 0 0.2", "box outside the image"),
        ("0 0.5 0.5 0.2 -0.1", "box outside the image"),
        ("0 0.5 1.2 0.2 0.2", "box outside the image"),
        ("0 nan 0.5 0.2 0.2", "non-finite"),
    ],
)
def test_bad_label_line_names_file_and_line(dataset: Path, line: str, message: str) -> None:
    label = dataset.parent / "labels" / "train" / "000002.txt"
    label.write_text(f"1 0.5 0.5 0.2 0.2\n{line}\n")
    spec = read_data_yaml(dataset)
    with pytest.raises(DataError, match=message) as err:
        load_split(spec, "train", 32, skip_bad=False)
    assert f"{label}:2:" in str(err.value)


def test_box_within_tolerance_is_clipped(dataset: Path) -> None:
    (dataset.parent / "labels" / "train" / "000002.txt").write_text("0 0.5 0.5 1.005 0.5\n")
    split = load_split(read_data_yaml(dataset), "train", 64, skip_bad=False)
    box = split.original_boxes(1)
    assert torch.allclose(box, torch.tensor([[0.0, 0.0, 16.0, 32.0, 48.0]]), atol=1e-4)


@pytest.mark.parametrize("content", [b"not a png at all", b""])
def test_unreadable_image_names_the_file(dataset: Path, content: bytes) -> None:
    image = dataset.parent / "images" / "val" / "000002.png"
    image.write_bytes(content)
    with pytest.raises(DataError, match="unreadable image") as err:
        load_split(read_data_yaml(dataset), "val", 32, skip_bad=False)
    assert str(image) in str(err.value)


def test_listed_image_missing(tmp_path: Path) -> None:
    _make_dataset(tmp_path)
    (tmp_path / "val.txt").write_text("images/val/000001.png\nimages/val/gone.png\n")
    spec = read_data_yaml(
        _write_yaml(tmp_path / "d.yaml", "train: images/train\nval: val.txt\nnames: [a, b]\n")
    )
    with pytest.raises(DataError, match=r"gone\.png: unreadable image"):
        load_split(spec, "val", 32, skip_bad=False)


def test_skip_bad_warns_once_with_count(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = dataset.parent
    (root / "images" / "train" / "000002.png").write_bytes(b"garbage")
    (root / "labels" / "train" / "cat.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    spec = read_data_yaml(dataset)
    with pytest.raises(DataError, match=r"and 1 more bad samples"):
        load_split(spec, "train", 32, skip_bad=False)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        split = load_split(spec, "train", 32, skip_bad=True)
    assert [p.name for p in split.paths] == ["000001.png"]
    assert split.images.shape == (1, 3, 32, 32) and len(split.boxes) == 1
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "skipped 2 of 3" in message and "000002.png" in message and "cat.txt:1" in message
    # every sample bad: an error even with skip_bad
    (root / "images" / "train" / "000001.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="all 3 images are bad"):
        load_split(spec, "train", 32, skip_bad=True)


def test_duplicate_image_ids_are_rejected(tmp_path: Path) -> None:
    _make_dataset(tmp_path)
    _write_image(tmp_path / "images" / "more" / "1.png", 8, 8)  # int("1") == int("000001")
    spec = read_data_yaml(
        _write_yaml(
            tmp_path / "d.yaml",
            "train: images/train\nval: [images/val, images/more]\nnames: [a, b]\n",
        )
    )
    with pytest.raises(DataError, match="must be unique"):
        load_split(spec, "val", 32, skip_bad=False)


def test_letterbox_pixels_boxes_and_round_trip(dataset: Path) -> None:
    split = load_split(read_data_yaml(dataset), "val", 64, skip_bad=False)
    assert split.image_ids == [1, 2, "cat"]
    assert split.orig_sizes == [(32, 64), (64, 32), (48, 48)]
    # 64x32 (w x h) -> scale 1, pad 16 rows above and below
    g = split.letterboxes[0]
    assert (g.scale, g.pad_x, g.pad_y, g.new_w, g.new_h) == (1.0, 0, 16, 64, 32)
    img = split.images[0]
    assert (img[:, :16] == PAD_VALUE).all() and (img[:, 48:] == PAD_VALUE).all()
    assert img[:, 16:48].float().mean(dim=(1, 2)).tolist() == [200.0, 30.0, 30.0]
    # "0 0.5 0.5 0.25 0.5" on 64x32 -> x 24..40, y 8..24, +16 rows of padding
    expected = torch.tensor([[0.0, 24, 24, 40, 40], [1.0, 0, 16, 16, 32]])
    assert torch.allclose(split.boxes[0], expected)
    # 32x64 image at 64: scale 1, pad 16 columns; "1 0.5 0.75 1.0 0.5" -> x 0..32, y 32..64
    assert torch.allclose(split.boxes[1], torch.tensor([[1.0, 16, 32, 48, 64]]))
    assert split.boxes[2].shape == (0, 5)
    for i in range(len(split)):
        orig = split.original_boxes(i)
        back = split.letterboxes[i].to_letterbox(orig[:, 1:])
        assert torch.allclose(back, split.boxes[i][:, 1:], atol=1e-4)
    # a scaled case: 64x32 image at 32 -> scale 0.5, pad_y 8
    small = load_split(read_data_yaml(dataset), "val", 32, skip_bad=False)
    assert torch.allclose(small.boxes[0][:, 1:], torch.tensor([[12.0, 12, 20, 20], [0, 8, 8, 16]]))
    assert torch.allclose(
        small.to_original(small.boxes[0][:, 1:], 0), split.original_boxes(0)[:, 1:]
    )


@pytest.mark.parametrize(("h", "w", "size"), [(480, 640, 128), (100, 37, 96), (7, 300, 32)])
def test_letterbox_geometry_inverts(h: int, w: int, size: int) -> None:
    g = letterbox_geometry(h, w, size)
    assert max(g.new_w, g.new_h) == size and g.pad_x >= 0 and g.pad_y >= 0
    boxes = torch.tensor([[0.0, 0, w, h], [w * 0.2, h * 0.3, w * 0.6, h * 0.9]])
    lb = g.to_letterbox(boxes)
    assert lb.min() >= 0 and lb.max() <= size + 1e-3
    assert torch.allclose(g.to_original(lb, (h, w)), boxes, atol=1e-3)


def _rect_split(size: int = 32) -> DetectionSplit:
    """Black images, each with one white rectangle off-centre: boxes checkable from pixels."""
    rects = [(2, 3, 10, 20), (20, 1, 31, 9), (5, 20, 27, 30), (0, 0, 6, 6), (14, 10, 17, 25)]
    images = torch.zeros((len(rects), 3, size, size), dtype=torch.uint8)
    boxes = []
    for i, (x1, y1, x2, y2) in enumerate(rects):
        images[i, :, y1:y2, x1:x2] = 255
        boxes.append(torch.tensor([[float(i % 2), x1, y1, x2, y2]]))
    geometry = letterbox_geometry(size, size, size)
    n = len(rects)
    return DetectionSplit(
        "train", size, images, boxes, list(range(n)), [Path(f"{i}.png") for i in range(n)],
        [(size, size)] * n, [geometry] * n,
    )  # fmt: skip


def test_batches_format_order_and_partial_batches() -> None:
    split = _rect_split()
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(split, 2, shuffle=False, augment=False, generator=g))
    assert [b[2].tolist() for b in batches] == [[0, 1], [2, 3], [4]]  # last partial batch kept
    images, targets, _ = batches[1]
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32)
    assert torch.equal(images, split.images[2:4].float() / 255)
    # (batch_index, cls, cx, cy, w, h): rect 2 is (5, 20, 27, 30), rect 3 (0, 0, 6, 6), / 32
    expected = torch.tensor([[0, 0, 16, 25, 22, 10], [1, 1, 3, 3, 6, 6]]) / torch.tensor(
        [1, 1, 32, 32, 32, 32]
    )
    assert torch.allclose(targets, expected)
    shuffled = list(iterate_batches(split, 2, shuffle=True, augment=False, generator=g))
    assert len(shuffled) == 2 and all(len(b[2]) == 2 for b in shuffled)  # partial dropped
    # deterministic given the generator
    runs = [
        [
            b[2].tolist()
            for b in iterate_batches(split, 2, shuffle=True, augment=True, generator=gen)
        ]
        for gen in (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
    ]
    assert runs[0] == runs[1]
    one = list(iterate_batches(split, 8, shuffle=True, augment=False, generator=g))
    assert len(one) == 1 and sorted(one[0][2].tolist()) == [0, 1, 2, 3, 4]  # split < batch
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(split, 0, shuffle=False, augment=False, generator=g))


def test_augmented_boxes_stay_on_the_shapes() -> None:
    split = _rect_split()
    flipped_seen = set()
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        for images, targets, indices in iterate_batches(
            split, 5, shuffle=True, augment=True, generator=g
        ):
            assert images.min() >= 0 and images.max() <= 1
            for b, cls, cx, cy, w, h in targets.tolist():
                i = int(indices[int(b)])
                assert cls == i % 2
                ys, xs = torch.nonzero(images[int(b)].sum(0) > 0.3, as_tuple=True)
                # the white rectangle's pixels span exactly the target box
                box = [xs.min() / 32, ys.min() / 32, (xs.max() + 1) / 32, (ys.max() + 1) / 32]
                got = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                assert np.allclose(box, got, atol=1e-6), (seed, i, box, got)
                original = split.boxes[i][0, 1].item() / 32
                flipped_seen.add(not np.isclose(got[0], original))
    assert flipped_seen == {True, False}  # both flipped and unflipped samples occurred


def test_flip_twice_is_identity_and_jitter_is_per_image() -> None:
    split = _rect_split()
    images = split.images.clone()
    batch_index = torch.arange(len(split))
    xyxy = torch.cat(split.boxes)[:, 1:]
    g = torch.Generator().manual_seed(0)
    once, boxes_once = augment_batch(
        images.clone(), batch_index, xyxy, g, flip_p=1.0, hue=0, saturation=0, value=0
    )
    assert not torch.equal(boxes_once, xyxy)
    twice, boxes_twice = augment_batch(
        (once * 255).round().to(torch.uint8), batch_index, boxes_once, g,
        flip_p=1.0, hue=0, saturation=0, value=0,
    )  # fmt: skip
    assert torch.equal(boxes_twice, xyxy)
    assert torch.allclose(twice, images.float() / 255, atol=1e-6)
    # colour jitter: white stays neutral grey but its brightness differs between images
    jittered, _ = augment_batch(images.clone(), batch_index, xyxy, g, flip_p=0.0)
    whites = [jittered[i, :, int(xyxy[i, 1]), int(xyxy[i, 0])] for i in range(len(split))]
    assert all(torch.allclose(w, w.mean().expand(3), atol=1e-4) for w in whites)
    assert len({round(float(w.mean()), 4) for w in whites}) > 1
    assert torch.equal(images, split.images)  # the caller's images untouched


def test_split_fields_are_consistent(dataset: Path) -> None:
    spec = read_data_yaml(dataset)
    spec = dataclasses.replace(spec, val=spec.val[:2])
    split = load_split(spec, "val", 32, skip_bad=False)
    n = len(split)
    assert n == 2 == len(split.boxes) == len(split.image_ids) == len(split.orig_sizes)
    assert split.images.dtype == torch.uint8 and split.boxes[0].dtype == torch.float32


def test_jpeg_with_exif_rotation_and_draft(tmp_path: Path) -> None:
    # stored 40 wide x 20 high, left half red, right half blue; EXIF orientation 6 means "rotate
    # 90 degrees clockwise to display": displayed 20 wide x 40 high, red on top
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    _write_image(tmp_path / "images" / "train" / "7.png", 8, 8)
    (tmp_path / "images" / "val").mkdir(parents=True)
    stored.save(tmp_path / "images" / "val" / "1.jpg", exif=exif, quality=95)
    # a big photo: decoded with JPEG draft (shrunk by the decoder), then resized exactly
    big = Image.new("RGB", (1600, 800), (0, 200, 0))
    big.save(tmp_path / "images" / "val" / "2.jpg", quality=90)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "1.txt").write_text("0 0.5 0.25 1.0 0.5\n")  # the red half
    spec = read_data_yaml(
        _write_yaml(tmp_path / "d.yaml", "train: images/train\nval: images/val\nnames: [a]\n")
    )
    split = load_split(spec, "val", 32, skip_bad=False)
    assert split.orig_sizes == [(40, 20), (800, 1600)]
    img = split.images[0].float()  # scale 0.8 -> 16 x 32, pad 8 columns each side
    assert (split.images[0][:, :, :8] == PAD_VALUE).all()
    top, bottom = img[:, 2:14, 10:22].mean(dim=(1, 2)), img[:, 18:30, 10:22].mean(dim=(1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    assert torch.allclose(split.boxes[0], torch.tensor([[0.0, 8, 0, 24, 16]]))
    green = split.images[1][:, 10:22].float().mean(dim=(1, 2))
    assert green[1] > 180 and green[0] < 30 and green[2] < 30


def test_batches_of_images_held_on_another_device_are_made_there_with_the_hosts_labels(
    tmp_path: Path,
) -> None:
    # what a GPU-held data set does (trainer.data.on_device), checked here on the meta device,
    # which keeps shapes only and refuses most operations that mix it with host tensors:
    # the pixels are cut, warped, flipped and coloured where the images are; the draws, labels
    # and indices stay the host's, so an epoch is the same batches on either device
    data = load_data(str(shapes.shapes_yaml(tmp_path, n_train=48, n_val=4)), 64)
    elsewhere = dataclasses.replace(data.train, images=data.train.images.to("meta"))
    for spec in (AugmentSpec(mosaic=0.5, scale=0.3, translate=0.1), AugmentSpec(), False):
        host = iterate_batches(
            data.train, 16, shuffle=True, augment=spec, generator=torch.Generator().manual_seed(4)
        )
        there = iterate_batches(
            elsewhere, 16, shuffle=True, augment=spec, generator=torch.Generator().manual_seed(4)
        )
        for (images, targets, indices), (held, held_targets, held_indices) in zip(
            host, there, strict=True
        ):
            assert held.device.type == "meta" and held.shape == images.shape
            assert held.dtype == images.dtype == torch.float32
            assert torch.equal(held_targets, targets) and torch.equal(held_indices, indices)


def test_a_data_set_stays_on_the_host_of_a_cpu_or_a_gpu_it_would_crowd(tmp_path: Path) -> None:
    data = load_data(str(shapes.shapes_yaml(tmp_path, n_train=8, n_val=4)), 32)
    assert on_device(data, torch.device("cpu")) is data
    assert data.image_bytes == (8 + 4) * 3 * 32 * 32
    # 1,200 images at 128 px (59 MB) go on any GPU; 10,000 at 640 px (12.3 GB) not on a 24 GB one
    assert fits_on_device(59_000_000, 20 * 10**9)
    assert not fits_on_device(12_300_000_000, 24 * 10**9)
    assert fits_on_device(12_300_000_000, 130 * 10**9)
    assert fits_on_device(int(DEVICE_SHARE * 10**9), 10**9)
    assert not fits_on_device(int(DEVICE_SHARE * 10**9) + 1, 10**9)
