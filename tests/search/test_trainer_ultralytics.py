"""The Ultralytics trainer adapter (search/trainers/ultralytics.py, ultralytics_params.py).

The fast tests check the parameter registry against the installed Ultralytics (a version bump
that changes a default or a range fails here) and the adapter's pieces without training. The slow
ones train YOLOv8n from `yolov8n.yaml` for a few iterations at 64 px on a tiny `shapes`, offline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from search.trainers import make_trainer
from search.trainers import ultralytics as adapter
from search.trainers.base import Evaluation, TrainerError, TrialJob
from search.trainers.ultralytics_params import OPTIMIZERS

ROOT = Path(__file__).parents[2]
ul = pytest.importorskip("ultralytics", reason=f"the Ultralytics extra: {adapter.INSTALL}")


# --- the registry against Ultralytics' own defaults and checks ---------------------------------


def _ultralytics_args() -> list[Any]:
    return [p for p in adapter.PARAMS if p.name not in ("milestones", "gamma")]


def test_defaults_are_ultralytics_own() -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    for p in _ultralytics_args():
        assert p.hyp == p.name, p
        if p.name == "model":  # Ultralytics has none; tune trains YOLOv8n from scratch
            assert DEFAULT_CFG_DICT["model"] is None and p.default == "yolov8n.yaml"
            continue
        assert p.default == DEFAULT_CFG_DICT[p.name], p.name
        assert type(p.default) is type(DEFAULT_CFG_DICT[p.name]), p.name


def test_ranges_are_ultralytics_own() -> None:
    from ultralytics import cfg

    for p in _ultralytics_args():
        if p.name in cfg.CFG_FRACTION_KEYS or p.name == "scale":
            assert (p.kind, p.low, p.high) == ("float", 0, 1), p.name
        elif p.name in cfg.CFG_INT_KEYS:
            assert (p.kind, p.low) == ("int", cfg.CFG_INT_MIN.get(p.name, 0)), p.name
        elif p.name in cfg.CFG_BOOL_KEYS:
            assert p.kind == "bool", p.name
        elif p.name in cfg.CFG_FLOAT_KEYS - {"batch"}:  # no range there: tune says >= 0
            assert (p.kind, p.low, p.high) == ("float", 0, None), p.name
        # Ultralytics' own check accepts each bound, and the default
        for value in {p.low, p.high, p.default} - {None}:
            if p.kind in ("float", "int"):
                args = {p.name: type(p.default)(value)}
                cfg.check_cfg(args, hard=True)
    cfg.get_cfg(overrides={p.name: p.default for p in _ultralytics_args()})  # all are its args


def test_optimizer_choices_are_ultralytics_own() -> None:
    import torch
    from ultralytics.engine.trainer import BaseTrainer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    me = SimpleNamespace(
        args=SimpleNamespace(lr0=0.01, optimizer="auto", warmup_bias_lr=0.1), data={"nc": 5}
    )
    for name in OPTIMIZERS:
        if name != "MuSGD":  # needs a Detect head; `auto` picks it beyond 10000 iterations
            BaseTrainer.build_optimizer(me, model, name=name, iterations=1000)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        BaseTrainer.build_optimizer(me, model, name="Lion")  # type: ignore[arg-type]
    assert adapter.PARAMS.require("optimizer").default == "auto"


def test_the_trainer_declares_box_cls_dfl_and_its_checkpoint() -> None:
    trainer = make_trainer("ultralytics")
    assert trainer.components == ("box", "cls", "dfl")
    assert trainer.checkpoint == "weights/last.pt"
    assert adapter.PARAMS.in_group("loss weight") == ("box", "cls", "dfl")
    with pytest.raises(ValueError, match=r"lobj is not a parameter of trainer 'ultralytics'.*box"):
        trainer.params.require("lobj")


def test_options_are_checked() -> None:
    assert adapter.from_options({"workers": 2, "log_every": 5}, "trial.ultralytics").workers == 2
    with pytest.raises(TrainerError, match=r"unknown keys trial.ultralytics.amp, .*\.epochs"):
        adapter.from_options({"amp": True, "epochs": 3}, "trial.ultralytics")
    with pytest.raises(TrainerError, match=r"unknown key trial.ultralytics.x \(known: workers"):
        adapter.from_options({"x": 1}, "trial.ultralytics")
    with pytest.raises(TrainerError, match=r"trial.ultralytics.workers .* but got workers=-1"):
        adapter.from_options({"workers": -1}, "trial.ultralytics")
    with pytest.raises(TrainerError, match=r"log_every must be an integer >= 1.*log_every=0"):
        adapter.from_options({"log_every": 0}, "trial.ultralytics")


def test_without_ultralytics_a_trial_says_how_to_install_it(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["ultralytics"] = None  # as if not installed
from pathlib import Path
from search.trainers import make_trainer
from search.trainers.base import TrainerError, TrialJob
trainer = make_trainer("ultralytics", {{"workers": 0}})  # the study file checks: no import
job = TrialJob(values={{}}, data="shapes", epochs=1, eval_interval=1, out=Path({str(tmp_path)!r}))
for call in (lambda: trainer.prepare(job), lambda: trainer.run(job, print)):
    try:
        call()
    except TrainerError as exc:
        print("ERROR", exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2, proc.stdout
    for line in errors:
        assert "not installed" in line and "uv sync --extra ultralytics" in line


def test_milestones_multiply_ultralytics_schedule() -> None:
    def linear(x: float) -> float:
        return 1 - x / 10

    lf = adapter._with_milestones([0.3, 0.6], 0.5)(linear, 10)
    assert [lf(x) for x in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1.0, 0.8, 0.7 * 0.5, 0.5 * 0.5, 0.4 * 0.25, 0.1 * 0.25]
    )
    assert adapter._with_milestones([], 0.5)(linear, 10) is linear
    assert adapter._with_milestones([1.0], 0.5)(linear, 10)(9) == pytest.approx(0.1)  # never
    job = TrialJob(
        values={"milestones": [0.6, 0.3]}, data="x", epochs=1, eval_interval=1, out=Path()
    )
    with pytest.raises(TrainerError, match=r"increasing order, but got milestones=\[0.6, 0.3\]"):
        adapter.UltralyticsTrainer().check(job)


def test_a_model_is_never_downloaded(tmp_path: Path) -> None:
    assert adapter._model_source("yolov8n.yaml") == "yolov8n.yaml"
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"")
    assert adapter._model_source(str(weights)) == str(weights)
    for name in ("yolov8n", "yolov8n.pt", str(tmp_path / "missing.pt")):
        with pytest.raises(TrainerError, match=r"Ultralytics would download .* but got model="):
            adapter._model_source(name)


def test_the_data_yaml_ultralytics_reads_has_an_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    source = tmp_path / "set" / "data.yaml"
    source.write_text("path: images/..\ntrain: images/train\nval: images/val\nnames: [a]\n")
    import yaml

    written = yaml.safe_load(adapter._write_data_yaml(source, tmp_path / "copy.yaml").read_text())
    assert written == {
        "path": str(tmp_path / "set"),
        "train": "images/train",
        "val": "images/val",
        "names": ["a"],
    }


def test_losses_are_unweighted_and_a_zero_gain_is_left_out() -> None:
    job = TrialJob(values={}, data="x", epochs=1, eval_interval=1, out=Path())
    values = {**adapter.PARAMS.defaults(), "box": 2.0, "cls": 0.0, "dfl": 0.5}
    progress = adapter._Progress(job, values, None, print, 1, False)  # type: ignore[arg-type]
    logged = {"val/box_loss": 3.0, "val/cls_loss": 0.0, "val/dfl_loss": 1.0}
    assert progress.unweighted(logged, prefix="val/") == {"box": 1.5, "dfl": 2.0}
    assert progress.unweighted({"l1_loss": 1.0}) == {"dfl": 2.0}  # YOLO26's DFL-free head
    with pytest.raises(TrainerError, match="'seg_loss'"):
        progress.unweighted({"seg_loss": 1.0})


# --- real training: a few iterations at 64 px ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    from trainer.shapes import shapes_yaml

    return str(shapes_yaml(tmp_path_factory.mktemp("data"), n_train=16, n_val=8))


SMALL = {"imgsz": 64, "batch": 8, "optimizer": "SGD", "warmup_epochs": 0.0, "close_mosaic": 0}


def _job(data: str, out: Path, **fields: Any) -> TrialJob:
    values = {**SMALL, **fields.pop("values", {})}
    spec: dict[str, Any] = {"epochs": 2, "eval_interval": 1, "device": "cpu", "threads": 1}
    return TrialJob(values=values, data=data, out=out, seed=0, **{**spec, **fields})


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_trial_reports_each_evaluation_unweighted(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "trial"
    values = {"cls": 0.0, "box": 5.0, "lr0": 0.02, "lrf": 0.5, "milestones": [0.5], "gamma": 0.1}
    job = _job(tiny, out, epochs=3, eval_interval=2, values=values)
    reports: list[Evaluation] = []
    outcome = adapter.UltralyticsTrainer(log_every=1).run(job, reports.append)

    # evaluated at the interval and at the end only; step = epochs completed, iter = batches
    assert [e.step for e in reports] == [2, 3] and [e.iter for e in reports] == [4, 6]
    assert [line["iter"] for line in reports[0].train] == [1, 2, 3, 4]
    assert [line["iter"] for line in reports[1].train] == [5, 6]
    for e in reports:
        assert set(e.metrics) >= {"mAP50", "mAP50_95", "val_loss"}
        assert set(e.losses) == {"box", "dfl"}  # cls gain 0: no unweighted value to report
        assert e.seconds_training > 0 and e.seconds_evaluating > 0
        for line in e.train:
            assert set(line) == {"epoch", "iter", "lr", "loss", "lbox", "ldfl", "latency"}
    # Ultralytics logs weighted losses: dividing by the gain gives the unweighted component
    csv = (out / "results.csv").read_text().splitlines()
    header, last = csv[0].split(","), dict(zip(csv[0].split(","), csv[-1].split(","), strict=True))
    assert "val/box_loss" in header
    assert reports[-1].losses["box"] * 5.0 == pytest.approx(float(last["val/box_loss"]), rel=1e-4)
    assert reports[-1].losses["dfl"] * 1.5 == pytest.approx(float(last["val/dfl_loss"]), rel=1e-4)
    # lr: Ultralytics' linear decay to lr0 * lrf, times gamma from the milestone (epoch >= 1.5)
    lr = {line["epoch"]: line["lr"] for e in reports for line in e.train}

    def linear(x: float) -> float:
        return (1 - x / 3) * (1 - 0.5) + 0.5

    assert lr == pytest.approx(
        {1: 0.02 * linear(0), 2: 0.02 * linear(1), 3: 0.02 * linear(2) * 0.1}
    )

    # the outcome: the last evaluation, a JSON-ready summary naming the run folder and best.pt
    assert outcome.metrics == {k: reports[-1].metrics[k] for k in ("mAP50", "mAP50_95")}
    summary = json.loads(json.dumps(outcome.summary))
    assert summary["run_dir"] == str(out) and Path(summary["best_pt"]).is_file()
    assert summary == json.loads((out / "summary.json").read_text())
    assert outcome.inference_ms is None or outcome.inference_ms > 0
    assert (out / "weights" / "last.pt").is_file() and (out / "args.yaml").is_file()
    assert [r["epoch"] for r in _lines(out) if "mAP50" in r] == [2, 3]

    # a retry of a trial whose run had finished (its worker lost before the result was stored):
    # nothing left to train, the outcome from the checkpoint
    again: list[Evaluation] = []
    retry = adapter.UltralyticsTrainer().run(dataclasses.replace(job, resume=True), again.append)
    assert again == [] and retry.metrics == outcome.metrics
    assert retry.summary["best_pt"] == summary["best_pt"]


@pytest.mark.slow
def test_a_stop_from_report_ends_training_and_a_retry_resumes(tiny: str, tmp_path: Path) -> None:
    import optuna

    out = tmp_path / "trial"
    threads = threading.active_count()
    children = _children()  # earlier tests in this process may have left some of their own

    def prune(evaluation: Evaluation) -> None:
        raise optuna.TrialPruned(f"pruned at step {evaluation.step}")

    trainer = adapter.UltralyticsTrainer(log_every=1)
    with pytest.raises(optuna.TrialPruned, match="pruned at step 1"):
        trainer.run(_job(tiny, out), prune)
    # stopped right after the first evaluation: its checkpoint is there, nothing runs on
    import torch

    ckpt = torch.load(out / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    assert threading.active_count() == threads
    assert _children() <= children  # none of Ultralytics' own is left
    assert [r["epoch"] for r in _lines(out)] == [1, 1, 1]  # two training lines, one evaluation

    # a retry of the lost trial: the remaining epoch from last.pt
    reports: list[Evaluation] = []
    outcome = trainer.run(_job(tiny, out, resume=True), reports.append)
    assert [(e.step, e.iter) for e in reports] == [(2, 4)]
    assert [line["iter"] for line in reports[0].train] == [3, 4]
    lines = [(r["epoch"], r["iter"]) for r in _lines(out)]
    assert lines == [(1, 1), (1, 2), (1, 2), (2, 3), (2, 4), (2, 4)]  # epoch 1's kept
    assert math.isfinite(outcome.metrics["mAP50_95"])


# --- acceptance: a study of the Ultralytics trainer through the real CLI ----------------------

STUDY = Path(__file__).with_name("ultralytics-smoke.toml")
BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]


def one_big_box(root: Path, n_train: int = 32, n_val: int = 8, size: int = 64) -> Path:
    """A data set a detector learns something of in one epoch at 64 px: one class, one object
    covering 80-95% of each side of a noisy image (YOLO layout, absolute `path`)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            w, h = rng.uniform(0.8, 0.95, 2)
            cx, cy = (rng.uniform(0.5 - (1 - s) / 2, 0.5 + (1 - s) / 2) for s in (w, h))
            x1, x2, y1, y2 = (
                int(v * size) for v in (cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2)
            )
            image[y1:y2, x1:x2] = rng.integers(150, 255, 3)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(f"0 {cx} {cy} {w} {h}\n")
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n"
    )
    return root / "data.yaml"


def test_lobj_is_not_an_ultralytics_parameter(tmp_path: Path) -> None:
    from search.study.study_file import StudyFileError, load_study_file

    study = tmp_path / "bad.toml"
    study.write_text(
        STUDY.read_text().replace("[space]\n", "[space]\nlobj = { low = 0.1, high = 1.0 }\n")
    )
    with pytest.raises(StudyFileError) as error:
        load_study_file(str(study))
    message = str(error.value)
    assert "unknown parameter space.lobj for trainer 'ultralytics'" in message
    valid = message.partition("(valid: ")[2].partition(")")[0].split(", ")
    for param in adapter.PARAMS:  # those a space draws (milestones: as milestone1, ...)
        assert (param.name in valid) == (param.searchable and param.name != "milestones"), param
    assert "\n" not in message


@pytest.mark.slow
def test_an_ultralytics_study_runs_end_to_end(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState
    from ultralytics.cfg import get_cfg

    from search.commands.best import best_trial, export_best
    from search.report import gather_study

    data = one_big_box(tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [*TUNE, "launch", "--study", str(STUDY), "--storage", storage, "--workers", "1"]
    runs_dir = tmp_path / "runs"  # the workers' logs and the trials' run folders
    proc = subprocess.run(
        [*launch, "--data", str(data), "--runs-dir", str(runs_dir)],
        cwd=tmp_path / "data",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = optuna.load_study(study_name="ultralytics-smoke", storage=storage)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 3 and TrialState.FAIL not in states, proc.stdout[-2000:]
    assert states[0] == TrialState.COMPLETE  # the baseline: never pruned
    assert trials[1].params["lr0"] < 2e-4  # the draw the study file counts on
    assert trials[1].state == TrialState.PRUNED and trials[1].intermediate_values == {1: 0.0}
    assert study.best_value > 0

    # each trial kept its Ultralytics run folder and best.pt
    runs = sorted(runs_dir.glob("ultralytics-smoke/trial-*/weights/best.pt"))
    assert len(runs) == 3, runs

    # the report follows the trainer's components: box, cls, dfl (no obj)
    report = gather_study(study)
    assert report.components == ("box", "cls", "dfl")
    titles = [panel.title for panel in report.panels]
    for name in ("Box", "Cls", "DFL"):
        assert f"{name} loss (unweighted)" in titles, titles
    assert not any("obj" in title.lower() for title in titles)

    # tune best --export: a cfg Ultralytics' own loader takes
    # (whichever trial is best: a sampled one can beat the baseline on this data by its seed)
    cfg = tmp_path / "best.yaml"
    best = best_trial(study)
    export_best(study, best, cfg)
    args = get_cfg(cfg=cfg)
    expected = ("Adam", best.params["lr0"], best.params["box"], best.params["cls"], 64)
    assert (args.optimizer, args.lr0, args.box, args.cls, args.imgsz) == expected


def _children() -> set[str]:
    """The pids of this process's child processes."""
    found = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return set(found.stdout.split())
