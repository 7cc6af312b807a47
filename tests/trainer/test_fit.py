"""A real, short training run: the files it writes, the mAP it reports, resume and failures."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import trainer.fit
from trainer.config import TrainConfig
from trainer.data import label_path, load_data, read_data_yaml, read_labels
from trainer.evaluate import coco_map
from trainer.fit import fit
from trainer.records import EvalReport, NonFiniteLossError
from trainer.shapes import shapes_yaml

TRAIN_KEYS = {"epoch", "iter", "lr", "loss", "lbox", "lobj", "lcls", "latency"}
EVAL_KEYS = {"epoch", "iter", "mAP50", "mAP50_95", "val_lbox", "val_lobj", "val_lcls", "val_loss"}


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_yaml(tmp_path_factory.mktemp("cache"), n_train=64, n_val=16)


def _independent_map(data_yaml: Path, predictions: list[dict[str, object]]) -> float:
    """mAP50-95 of predictions.json against the label files, without any of trainer's code."""
    spec = read_data_yaml(data_yaml)
    images, annotations = [], []
    for path in spec.val:
        width, height = Image.open(path).size
        image_id = int(path.stem)
        images.append({"id": image_id, "width": width, "height": height})
        for cls, cx, cy, w, h in read_labels(label_path(path), len(spec.names)).tolist():
            bw, bh = w * width, h * height
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [cx * width - bw / 2, cy * height - bh / 2, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in enumerate(spec.names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not predictions:
            return 0.0
        evaluator = COCOeval(gt, gt.loadRes(predictions), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def test_coco_map_of_ground_truth_is_one_and_of_shifted_boxes_less(tiny_yaml: Path) -> None:
    data = load_data(str(tiny_yaml), imgsz=64)
    split = data.val
    perfect = [
        torch.cat([b[:, 1:], torch.ones(len(b), 1), b[:, :1]], dim=1)
        for b in (split.original_boxes(i) for i in range(len(split)))
    ]
    assert coco_map(split, perfect, len(data.names)) == pytest.approx((1.0, 1.0))
    shifted = [d.clone() for d in perfect]
    for d in shifted:
        d[:, [0, 2]] += 0.15 * (d[:, 2:3] - d[:, 0:1])  # 15% of the width to the right
    map50, map50_95 = coco_map(split, shifted, len(data.names))
    assert map50 == pytest.approx(1.0) and 0.2 < map50_95 < 0.9


def test_cli_run_writes_every_file_and_predictions_agree_with_the_reported_map(
    tiny_yaml: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = [
        str(Path(sys.executable).parent / "tune"), "train", "--data", str(tiny_yaml),
        "--epochs", "3", "--imgsz", "64", "--batch", "16", "--optimizer", "Adam",
        "--lr", "0.01", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("epoch 0 / iter 1 lr ") and " , loss " in line for line in lines)
    assert lines[-1].startswith("done: mAP50 ")
    for name in ("config.json", "metrics.jsonl", "summary.json", "predictions.json", "last.pt"):
        assert (out / name).is_file(), name
    config = TrainConfig.load(out / "config.json")
    assert (config.optimizer, config.lr, config.epochs) == ("Adam", 0.01, 3)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "mAP50" not in r]
    evals = [r for r in records if "mAP50" in r]
    assert train and all(set(r) == TRAIN_KEYS for r in train)
    assert [r["epoch"] for r in evals] == [1, 2, 3] and all(set(r) == EVAL_KEYS for r in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mAP50_95"] == evals[-1]["mAP50_95"]
    assert summary["inference_ms"] > 0 and summary["train_latency"] > 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "bbox", "score"}
    assert isinstance(predictions[0]["image_id"], int)  # numeric stems become ints
    assert _independent_map(tiny_yaml, predictions) == pytest.approx(summary["mAP50_95"], abs=1e-3)


def test_report_receives_every_evaluation_and_can_stop_the_run(
    tiny_yaml: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, EvalReport]] = []

    class Stop(Exception):
        pass

    def report(step: int, metrics: EvalReport) -> None:
        seen.append((step, metrics))
        if step == 2:
            raise Stop

    config = TrainConfig(
        data=str(tiny_yaml), imgsz=64, batch=16, epochs=5, log_interval=2, out=str(tmp_path)
    )
    with pytest.raises(Stop):
        fit(config, report=report)
    assert [step for step, _ in seen] == [1, 2]
    first = seen[0][1]
    assert first.train and first.train[0].iter == 1 and first.eval.iter == 4  # 64 images / 16
    assert seen[1][1].train[0].iter > first.train[-1].iter  # lines are not repeated
    assert (tmp_path / "last.pt").is_file()  # the stopped run can resume


def test_resume_continues_from_the_last_checkpoint(tiny_yaml: Path, tmp_path: Path) -> None:
    # mosaic in epochs 0-1, closed for the last (epoch 2); the run stops after epoch 1 (its
    # checkpoint holds the EMA, the generator that draws augmentations, the optimizer), so the
    # resumed run crosses close_mosaic and must still end exactly where the straight run ends
    base = TrainConfig(
        data=str(tiny_yaml), imgsz=64, batch=16, epochs=3, close_mosaic=1, threads=1,
        out=str(tmp_path / "a"),
    )  # fmt: skip
    data = load_data(str(tiny_yaml), imgsz=64)
    straight = fit(base, data=data)

    class Stop(Exception):
        pass

    def stop_after_first(step: int, metrics: EvalReport) -> None:
        if step == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(base.replace(out=str(tmp_path / "b")), report=stop_after_first, data=data)
    resumed = fit(base.replace(out=str(tmp_path / "b"), resume=True), data=data)
    assert resumed.iterations == straight.iterations == 12
    # same data order, same augmentations, same weights and EMA: the same end
    assert resumed.mAP50_95 == pytest.approx(straight.mAP50_95, abs=1e-6)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["ema_updates"] == b["ema_updates"] > 0
    for key in ("model", "train_model"):
        for name, value in a[key].items():
            assert torch.allclose(value, b[key][name], atol=1e-6), (key, name)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines if "mAP50" in line] == [1, 2, 3]


def test_close_mosaic_switches_at_the_right_epoch(
    tiny_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(data=str(tiny_yaml), epochs=5, close_mosaic=2)
    assert [config.mosaic_on(e) for e in range(5)] == [True, True, True, False, False]
    assert not any(config.replace(epochs=2).mosaic_on(e) for e in range(2))  # short: never
    assert not config.replace(augment=False).mosaic_on(0)
    assert not config.replace(mosaic=0.0).mosaic_on(0)
    # fit asks for the augmentation of each epoch: mosaic, mosaic, then none
    seen: list[float] = []
    real = trainer.fit.iterate_batches

    def spy(*args: Any, **kwargs: Any) -> Any:
        spec = kwargs["augment"]
        seen.append(spec.mosaic if spec else -1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.fit, "iterate_batches", spy)
    fit(
        config.replace(imgsz=64, batch=32, epochs=3, close_mosaic=1, eval_interval=3,
                       threads=1, out=str(tmp_path)),
        data=load_data(str(tiny_yaml), imgsz=64),
    )  # fmt: skip
    assert seen[:3] == [1.0, 1.0, 0.0]  # training epochs (evaluation passes augment=False)


def test_a_loss_that_explodes_stops_the_run_with_a_clear_error(
    tiny_yaml: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        data=str(tiny_yaml),
        imgsz=64,
        batch=16,
        epochs=3,
        optimizer="SGD",
        lr=1e30,
        warmup_iters=0,
        nbs=16,  # a step every batch: the training loss explodes within the first epoch
        out=str(tmp_path),
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite at epoch \d+ / iter \d+") as read:
        fit(config.replace(log_interval=1))  # the losses read on the host after every batch
    assert not (tmp_path / "summary.json").exists()  # an error, never a score of 0
    # read once per line (or per epoch) instead, which spares a GPU a wait every iteration: the
    # same error, naming the same batch, and no evaluation of the broken weights
    with pytest.raises(NonFiniteLossError) as settled:
        fit(config.replace(log_interval=1000, out=str(tmp_path / "rare")))
    assert str(settled.value) == str(read.value)
    assert not (tmp_path / "rare" / "last.pt").exists()


def test_a_tiny_data_set_with_a_too_large_batch_is_refused(tiny_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch=128"):
        fit(TrainConfig(data=str(tiny_yaml), imgsz=64, batch=128, out=str(tmp_path)))
