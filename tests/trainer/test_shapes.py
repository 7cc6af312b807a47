"""The built-in `shapes` data set: layout, determinism, safety when workers race to create it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from trainer import shapes

N_TRAIN, N_VAL = 12, 4


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` by relative path; data.yaml without its absolute `path` line."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "data.yaml":
                data = b"".join(ln for ln in data.splitlines(True) if not ln.startswith(b"path:"))
            out[str(p.relative_to(folder))] = data
    return out


def test_yolo_layout_and_labels(tmp_path: Path) -> None:
    path = shapes.shapes_yaml(tmp_path, n_train=N_TRAIN, n_val=N_VAL)
    assert path == tmp_path / f"shapes-v{shapes.SHAPES_VERSION}-{N_TRAIN}-{N_VAL}" / "data.yaml"
    spec = yaml.safe_load(path.read_text())
    assert spec["path"] == str(path.parent.resolve())
    assert (spec["train"], spec["val"]) == ("images/train", "images/val")
    assert spec["names"] == dict(enumerate(shapes.NAMES))
    root = path.parent
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted((root / "images" / split).glob("*.png"))
        assert [p.stem for p in images] == [f"{i:06d}" for i in range(count)]
        for image in images:
            with Image.open(image) as im:
                assert im.mode == "RGB" and im.size in shapes.IMAGE_SIZES
            lines = (root / "labels" / split / f"{image.stem}.txt").read_text().splitlines()
            assert 1 <= len(lines) <= shapes.MAX_OBJECTS
            for line in lines:
                cls, cx, cy, w, h = (float(v) for v in line.split())
                assert cls in range(len(shapes.NAMES))
                assert 0 < w <= 1 and 0 < h <= 1
                assert min(cx - w / 2, cy - h / 2) >= 0 and max(cx + w / 2, cy + h / 2) <= 1
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
    # second call: found in the cache, not regenerated
    mtime = path.stat().st_mtime_ns
    assert shapes.shapes_yaml(tmp_path, n_train=N_TRAIN, n_val=N_VAL) == path
    assert path.stat().st_mtime_ns == mtime


def test_same_bytes_every_time_and_size_independent(tmp_path: Path) -> None:
    a = shapes.shapes_yaml(tmp_path / "a", n_train=N_TRAIN, n_val=N_VAL).parent
    b = shapes.shapes_yaml(tmp_path / "b", n_train=N_TRAIN, n_val=N_VAL).parent
    assert _files(a) == _files(b)
    small = _files(shapes.shapes_yaml(tmp_path / "c", n_train=5, n_val=2).parent)
    big = _files(a)
    assert "images/train/000004.png" in small
    assert all(big[name] == data for name, data in small.items() if name != "data.yaml")


def test_default_counts_and_cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes, "N_TRAIN", 3)
    monkeypatch.setattr(shapes, "N_VAL", 2)
    path = shapes.shapes_yaml()
    assert path == tmp_path / "cache" / f"shapes-v{shapes.SHAPES_VERSION}" / "data.yaml"
    assert len(list((path.parent / "images" / "train").iterdir())) == 3


def test_losing_the_rename_race_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shapes._generate

    def slow_generate(
        out: Path, final: Path, n_train: int, n_val: int, style: shapes.ShapesStyle
    ) -> None:
        real(out, final, n_train, n_val, style)
        # meanwhile another worker finishes and renames its copy into place first
        other = final.parent / ".other"
        other.mkdir()
        real(other, final, n_train, n_val, style)
        other.rename(final)

    monkeypatch.setattr(shapes, "_generate", slow_generate)
    path = shapes.shapes_yaml(tmp_path, n_train=4, n_val=2)
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.parent.name]


def test_a_style_is_another_data_set_with_its_own_folder_and_statistics(tmp_path: Path) -> None:
    large = shapes.shapes_yaml(tmp_path, n_train=40, n_val=4, style=shapes.SHAPES_LARGE)
    default = shapes.shapes_yaml(tmp_path, n_train=40, n_val=4)
    assert large.parent.name == f"shapes-large-v{shapes.SHAPES_VERSION}-40-4"
    assert large.parent != default.parent
    assert (
        _files(large.parent)["images/train/000000.png"]
        != _files(default.parent)["images/train/000000.png"]
    )
    style = shapes.SHAPES_LARGE
    for label in (large.parent / "labels" / "train").iterdir():
        rows = [line.split() for line in label.read_text().splitlines()]
        assert 1 <= len(rows) <= style.max_objects
        image = Image.open(large.parent / "images" / "train" / f"{label.stem}.png")
        for _cls, _cx, _cy, w, h in rows:
            # the drawn size is the larger extent of the box (before rotation)
            extent = max(float(w) * image.width, float(h) * image.height)
            assert extent >= style.min_size * 0.7


_WORKER = """
import sys, time
from pathlib import Path
from trainer.shapes import shapes_yaml
cache, tag = Path(sys.argv[1]), sys.argv[2]
(cache / f"ready-{tag}").touch()
while not (cache / "go").exists():
    time.sleep(0.001)
print(shapes_yaml(cache, n_train=60, n_val=10))
"""


def test_two_processes_generating_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(cache), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 30
    while not all((cache / f"ready-{t}").exists() for t in "ab"):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    (cache / "go").touch()  # both start generating at the same moment
    results = [p.communicate(timeout=60) for p in procs]
    for (_, err), proc in zip(results, procs, strict=True):
        assert proc.returncode == 0, err
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    final = Path(paths.pop()).parent
    reference = shapes.shapes_yaml(tmp_path / "ref", n_train=60, n_val=10).parent
    assert _files(final) == _files(reference)
    leftovers = {p.name for p in cache.iterdir()} - {final.name, "go", "ready-a", "ready-b"}
    assert not leftovers
