"""`tune best --export`: each target's own loader accepts the file (Ultralytics' `get_cfg`), tune's
values land on the target's names, the format follows the study's trainer, mistakes are one line.
(The YOLOv5 file's keys and the round trip through `tune train --hyp`: tests/trainer/test_hyp.py.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from search.bookkeeping import trial_record
from search.cli import app
from search.commands.export import ExportError, default_format, export_values
from trainer.config import TrainConfig
from trainer.hyp import YOLOV5_DEFAULTS

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must not try the network

TRIAL = TrainConfig(lcls=0.3, lbox=0.07, lobj=0.6, lr=0.002, optimizer="SGD", milestones=(0.6,))
# a trial of the Ultralytics trainer as stored: Ultralytics' names, the adapter's own
# milestones/gamma, and the job's settings (TrialJob.record, search/trainers/base.py)
ULTRALYTICS_TRIAL: dict[str, Any] = {
    "lr0": 0.02, "lrf": 0.05, "box": 5.0, "cls": 0.7, "dfl": 1.2, "optimizer": "SGD",
    "momentum": 0.9, "imgsz": 64, "batch": 16, "milestones": [0.6], "gamma": 0.3,
    "data": "/data/shapes.yaml", "epochs": 2, "eval_interval": 1, "device": "auto",
    "out": "/runs/trial-3", "threads": 1, "resume": False, "seed": 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def ultralytics_cfg() -> Any:
    pytest.importorskip(
        "ultralytics", reason="the optional extra is not installed (uv sync --extra ultralytics)"
    )
    from ultralytics import cfg

    return cfg


def _loaded_as_yolo_train_does(cfg: Any, path: Path) -> dict[str, Any]:
    """The file through Ultralytics' own loader, both ways: `get_cfg(cfg=FILE)` (types and
    ranges) and as `yolo train cfg=FILE` merges it over the defaults (also every key known)."""
    cfg.get_cfg(cfg=path)
    overrides = cfg.YAML.load(path)
    cfg.get_cfg(cfg.DEFAULT_CFG_DICT, dict(overrides))  # SyntaxError on an unknown key
    return dict(overrides)


def test_a_tune_trial_as_an_ultralytics_cfg(ultralytics_cfg: Any, tmp_path: Path) -> None:
    exported = export_values("tune", TRIAL.to_dict(), "ultralytics", header="trial 7")
    path = tmp_path / "cfg.yaml"
    path.write_text(exported.text)
    args = _loaded_as_yolo_train_does(ultralytics_cfg, path)
    assert (args["box"], args["cls"], args["lr0"], args["optimizer"]) == (0.07, 0.3, 0.002, "SGD")
    assert (args["imgsz"], args["batch"], args["epochs"], args["cos_lr"]) == (128, 32, 12, False)
    assert "obj" not in args and "milestones" not in args and "dfl" not in args
    text = path.read_text()
    assert text.startswith("# trial 7\n")
    for said in (
        "obj=0.6: Ultralytics has no objectness loss",
        "milestones=[0.6]: no MultiStepLR",
        "dfl: stays at Ultralytics' default",
        "yolo train cfg=FILE model=MODEL",
    ):
        assert said in text, said


def test_tunes_schedule_and_augment_switch_map_onto_ultralytics_args(
    ultralytics_cfg: Any,
) -> None:
    cosine = yaml.safe_load(
        export_values("tune", TrainConfig(lr_decay="cosine").to_dict(), "ultralytics").text
    )
    assert cosine["cos_lr"] is True and cosine["lrf"] == 0.01
    constant = yaml.safe_load(
        export_values("tune", TrainConfig(lr_decay="none").to_dict(), "ultralytics").text
    )
    assert constant["cos_lr"] is False and constant["lrf"] == 1.0  # a constant lr there
    bare = yaml.safe_load(
        export_values("tune", TrainConfig(augment=False).to_dict(), "ultralytics").text
    )
    assert bare["mosaic"] == bare["fliplr"] == bare["hsv_s"] == bare["scale"] == 0.0


def test_an_ultralytics_trial_is_written_as_it_ran(ultralytics_cfg: Any, tmp_path: Path) -> None:
    assert default_format("ultralytics") == "ultralytics"
    exported = export_values("ultralytics", ULTRALYTICS_TRIAL)
    path = tmp_path / "cfg.yaml"
    path.write_text(exported.text)
    args = _loaded_as_yolo_train_does(ultralytics_cfg, path)
    job = {"data", "device", "out", "threads", "eval_interval", "resume"}
    left_out = job | {"milestones", "gamma"}
    expected = {k: v for k, v in ULTRALYTICS_TRIAL.items() if k not in left_out}
    assert args == expected
    assert "milestones, gamma: parameters of tune's Ultralytics adapter" in " ".join(
        line.lstrip("# ") for line in exported.text.splitlines()
    )


def test_the_ultralytics_adapters_own_trial_exports(ultralytics_cfg: Any, tmp_path: Path) -> None:
    adapter = pytest.importorskip(
        "search.trainers.ultralytics", reason="the Ultralytics trainer adapter has not landed"
    )
    values = {**adapter.PARAMS.defaults(), "milestones": [0.5], "data": "shapes", "epochs": 2}
    path = tmp_path / "cfg.yaml"
    path.write_text(export_values("ultralytics", {**values, "seed": None}).text)
    args = _loaded_as_yolo_train_does(ultralytics_cfg, path)
    assert args["model"] == values["model"] and args["box"] == values["box"]
    assert not {"milestones", "gamma", "data", "seed"} & set(args)


def test_ultralytics_rejecting_a_value_is_one_line(ultralytics_cfg: Any) -> None:
    with pytest.raises(ExportError, match=r"^Ultralytics rejects the exported cfg: .*lr0") as info:
        export_values("ultralytics", {**ULTRALYTICS_TRIAL, "lr0": 2.0})  # a fraction there
    assert "\n" not in str(info.value)


def test_the_format_must_fit_the_trainer() -> None:
    assert default_format("tune") == "yolov5"
    with pytest.raises(ExportError, match="format must be one of yolov5, ultralytics"):
        export_values("tune", TRIAL.to_dict(), "onnx")
    with pytest.raises(ExportError, match="trainer 'ultralytics' exports as ultralytics"):
        export_values("ultralytics", ULTRALYTICS_TRIAL, "yolov5")
    with pytest.raises(ExportError, match=r"for trainers tune, ultralytics, but .* 'command'"):
        export_values("command", {"lr": 0.1})


def _best(url: str) -> list[str]:
    return ["best", "--study", "s", "--storage", url]


def _study(tmp_path: Path, trainer: str, values: dict[str, Any]) -> str:
    """A SQLite study as `tune launch` leaves it: the stored table, one complete trial."""
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial_record.record_study_spec(study, {"name": "s", "trial": {"trainer": trainer}})
    study.add_trial(optuna.trial.create_trial(value=0.42, user_attrs={trial_record.CONFIG: values}))
    return url


def test_tune_best_export_writes_the_trainers_format(tmp_path: Path) -> None:
    url = _study(tmp_path, "tune", TRIAL.to_dict())
    path = tmp_path / "out" / "hyp.yaml"
    result = CliRunner().invoke(app, [*_best(url), "--export", str(path)])
    assert result.exit_code == 0, result.output
    assert f"wrote {path} (yolov5: tune train --hyp {path}" in result.output
    hyp = yaml.safe_load(path.read_text())
    assert hyp["cls"] == 0.3 and hyp["cls_pw"] == YOLOV5_DEFAULTS["cls_pw"]
    assert "trial 0 of trainer tune, mAP50-95 0.4200" in path.read_text()


def test_tune_best_export_mistakes_are_one_line(tmp_path: Path) -> None:
    url = _study(tmp_path, "tune", TRIAL.to_dict())
    runner = CliRunner()
    bad = runner.invoke(app, ["best", "--study", "s", "--storage", url, "--export",
                              str(tmp_path / "x.yaml"), "--format", "onnx"])  # fmt: skip
    assert bad.exit_code == 2
    assert "error: format must be one of yolov5, ultralytics, but got format='onnx'" in bad.output
    alone = runner.invoke(app, ["best", "--study", "s", "--storage", url, "--format", "yolov5"])
    assert alone.exit_code == 2 and "error: --format needs --export FILE" in alone.output


def test_tune_best_of_an_ultralytics_study_exports_a_cfg(
    ultralytics_cfg: Any, tmp_path: Path
) -> None:
    url = _study(tmp_path, "ultralytics", ULTRALYTICS_TRIAL)
    path = tmp_path / "cfg.yaml"
    result = CliRunner().invoke(app, [*_best(url), "--export", str(path)])
    assert result.exit_code == 0, result.output
    assert "  dfl: 1.2" in result.output  # the trial's own parameters, printed
    assert f"wrote {path} (ultralytics: yolo train cfg={path}" in result.output
    assert _loaded_as_yolo_train_does(ultralytics_cfg, path)["dfl"] == 1.2
