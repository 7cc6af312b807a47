"""Training on a CUDA device: bf16 autocast, channels_last, synchronised timing, CPU parity, the
data set held on the device.

These run only where `torch.cuda.is_available()` (they are skipped in CI, which has no GPU); the
device tool's GPU machine runs them with `python -m pytest tests/trainer/test_cuda.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.augment import AugmentSpec
from trainer.config import TrainConfig
from trainer.data import iterate_batches, load_data, on_device
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


def test_a_data_set_on_the_gpu_serves_the_hosts_batches(tiny_yaml: Path) -> None:
    """`on_device` copies the images once; batches made there are the host's (same draws, same
    labels; the pixels to float rounding of the GPU's bilinear sampling and colour matmul)."""
    data = load_data(str(tiny_yaml), 64)
    device = torch.device("cuda")
    held = on_device(data, device)
    assert held.train.images.device.type == "cuda" and held.train.images.dtype == torch.uint8
    assert on_device(data, device) is held and on_device(held, device) is held
    spec = AugmentSpec(mosaic=0.5, scale=0.3, translate=0.1)
    host = iterate_batches(
        data.train, 16, shuffle=True, augment=spec, generator=torch.Generator().manual_seed(2)
    )
    gpu = iterate_batches(
        held.train, 16, shuffle=True, augment=spec, generator=torch.Generator().manual_seed(2)
    )
    for (images, targets, indices), (on_gpu, gpu_targets, gpu_indices) in zip(
        host, gpu, strict=True
    ):
        assert on_gpu.device.type == "cuda" and gpu_targets.device.type == "cpu"
        assert torch.equal(targets, gpu_targets) and torch.equal(indices, gpu_indices)
        torch.testing.assert_close(on_gpu.cpu(), images, rtol=0, atol=2e-3)


def _host_waits_in_an_epoch(root: Path, n_train: int) -> int:
    """How often one training epoch of `n_train` images (batches of 16) makes the host wait
    for the GPU (torch's sync debug mode warns at each wait)."""
    import warnings

    from trainer.ema import ModelEMA
    from trainer.fit import train_one_epoch
    from trainer.iteration_log import TrainState
    from trainer.loss import DetectionLoss, LossWeights
    from trainer.optim import build_optimizer, build_scheduler
    from trainer.run_dir import RunDir

    data_yaml = shapes_yaml(root / "cache", n_train=n_train, n_val=4)
    out = root / f"run{n_train}"
    config = _config(data_yaml, out, device="cuda", log_interval=1000, epochs=1)
    device = torch.device("cuda")
    data = on_device(load_data(str(data_yaml), 64), device)
    model = build_detector("nano", nc=len(data.names)).to(device)
    ema = ModelEMA(model, config.ema_decay, config.ema_tau)
    loss_fn = DetectionLoss(model, LossWeights(config.lbox, config.lobj, config.lcls))
    optimizer = build_optimizer(model, config)
    iters = n_train // config.batch
    scheduler = build_scheduler(optimizer, config, iters, iters)
    run = RunDir(out)
    run.start_metrics(keep_through_iter=0)
    state = TrainState()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_one_epoch(
                model, ema, loss_fn, optimizer, scheduler, data.train, config, state, device,
                torch.Generator().manual_seed(0), run,
            )  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.iteration == iters
    return sum("synchroniz" in str(w.message) for w in caught)


def test_an_epoch_waits_on_the_gpu_as_often_whatever_its_length(tmp_path: Path) -> None:
    """No host synchronisation inside an iteration: the data set on the device, the targets
    assigned on the host, the losses summed and timed on the device and read at a training
    line and at the epoch's end. An epoch of 8 batches waits as often as one of 4."""
    _host_waits_in_an_epoch(tmp_path / "warm-up", 64)  # CUDA's and cuDNN's first-use waits
    short, long = (_host_waits_in_an_epoch(tmp_path, n) for n in (64, 128))
    print(f"host waits on the GPU: {short} in an epoch of 4 batches, {long} in one of 8")
    assert long == short


def test_the_map_computed_on_the_gpu_is_the_hosts() -> None:
    """trainer/mean_ap.py on CUDA: the same matches and precisions in float64 as on the host,
    for several runs at once (the scenes of tests/trainer/test_mean_ap.py)."""
    from tests.trainer.test_mean_ap import _scene
    from trainer.mean_ap import GroundTruth, mean_average_precision

    scenes = [_scene(seed) for seed in range(3)]
    truth = scenes[0][0]
    runs = [dets[: len(truth)] for _, dets in scenes]
    results = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        on = [[d.to(device) for d in run] for run in runs]
        results[name] = mean_average_precision(on, GroundTruth.of(truth, 4, device))
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-12)
