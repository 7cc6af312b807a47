"""Training on a CUDA device: bf16 autocast, channels_last, synchronised timing, CPU parity.

These run only where `torch.cuda.is_available()` (they are skipped in CI, which has no GPU); the
device tool's GPU machine runs them with `python -m pytest tests/trainer/test_cuda.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.fit import autocast_for, fit, resolve_device
from trainer.model import build_detector
from trainer.shapes import shapes_yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_yaml(tmp_path_factory.mktemp("cache"), n_train=64, n_val=16)


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    settings: dict[str, object] = {
        "data": str(data),
        "imgsz": 64,
        "batch": 16,
        "epochs": 2,
        "log_interval": 1,
        "lr": 0.01,
        "optimizer": "Adam",
        "out": str(out),
        **changes,
    }
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _train_lines(run_dir: Path) -> list[dict[str, float]]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line and "mAP50" not in line]


def test_a_cuda_run_with_bf16_autocast_completes_and_its_checkpoint_loads_on_cpu(
    tiny_yaml: Path, tmp_path: Path
) -> None:
    result = fit(_config(tiny_yaml, tmp_path / "run", device="cuda", amp=True))

    assert result.device.startswith("cuda")
    assert result.epochs_completed == 2 and result.iterations == 8
    assert all(math.isfinite(v) for v in (result.mAP50, result.mAP50_95))
    # timing is synchronised: a CUDA step is never "free" because its kernels were only queued
    assert result.train_latency > 0 and result.inference_ms > 0
    assert result.images_per_second > 0
    losses = [line["loss"] for line in _train_lines(Path(result.run_dir))]
    assert losses and all(math.isfinite(v) for v in losses)
    # the master weights stay float32 under autocast, and the checkpoint needs no GPU to load
    state = torch.load(Path(result.run_dir) / "last.pt", map_location="cpu", weights_only=True)
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in floats)


def test_autocast_runs_the_model_in_bf16_on_channels_last_weights() -> None:
    device = torch.device("cuda")
    config = TrainConfig(device="cuda", amp=True)
    model = build_detector("nano", 5).to(device=device, memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    with autocast_for(device, config)():
        outputs = model(images)
    assert all(o.dtype == torch.bfloat16 for o in outputs)
    with autocast_for(device, TrainConfig(device="cuda", amp=False))():
        assert all(o.dtype == torch.float32 for o in model(images))


@pytest.mark.parametrize("amp, tolerance", [(False, 1e-2), (True, 5e-2)])
def test_the_first_steps_on_cuda_match_the_cpu(
    tiny_yaml: Path, tmp_path: Path, amp: bool, tolerance: float
) -> None:
    """Same seed, same data: the same losses on both devices (bf16 within a few percent)."""
    runs = {}
    for device in ("cpu", "cuda"):
        config = _config(tiny_yaml, tmp_path / device, device=device, amp=amp, epochs=1)
        runs[device] = _train_lines(Path(fit(config).run_dir))
    assert len(runs["cpu"]) == len(runs["cuda"]) == 4
    # the first line is the loss before any update; later ones drift apart (TF32 convolutions on
    # CUDA, bf16 under autocast, amplified by Adam at lr 0.01)
    cpu, cuda = runs["cpu"][0], runs["cuda"][0]
    assert cpu["iter"] == cuda["iter"] == 1
    for key in ("loss", "lbox", "lobj", "lcls"):
        assert cuda[key] == pytest.approx(cpu[key], rel=tolerance), (key, cpu, cuda)


def test_a_cuda_index_beyond_the_machine_is_a_clear_error() -> None:
    missing = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"cuda:{missing}.*has {missing} CUDA device"):
        resolve_device(f"cuda:{missing}")
