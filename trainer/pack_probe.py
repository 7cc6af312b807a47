"""How many trials fit one pack on this device (`[trial] pack = "auto"`).

On CUDA: the peak memory of one training step (forward, loss, backward) of the fused model of
packs of 1 and of 2 trials on a real batch gives what one trial more costs; the pack is as many
trials as fit `headroom` of the device's free memory, at most `limit`. The optimizer's and EMA's
state (a few copies of the weights, small beside activations for these detectors) are within
the headroom, and the data set's images are on the device before the free memory is read
(`trainer.data.on_device`). Anywhere else: 1 (a pack measured slower than separate runs on CPU:
docs/benchmarks.md).

The arithmetic (`pack_size_for`) is tested on CPU; the probe itself has not yet run on a GPU.
"""

from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.data import DetectionData, iterate_batches, on_device
from trainer.fit import resolve_device
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import build_detector

LIMIT = 64  # the largest pack the benchmarks measure
HEADROOM = 0.8  # of the free memory; the rest for the allocator's fragmentation and the data


def auto_pack_size(
    config: TrainConfig, data: DetectionData, limit: int = LIMIT, headroom: float = HEADROOM
) -> int:
    """The pack size for `config` on its device (see the module docstring)."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return 1
    data = on_device(data, device)  # before the free memory is read: the runs will hold it
    free, _ = torch.cuda.mem_get_info(device)
    one = _peak_step_bytes(config, data, 1, device)
    two = _peak_step_bytes(config, data, 2, device)
    return pack_size_for(free, one, two, limit, headroom)


def pack_size_for(free: int, one: int, two: int, limit: int, headroom: float) -> int:
    """Trials that fit `headroom * free` bytes when a pack of one needs `one` and of two `two`."""
    per_trial = max(two - one, 1)
    base = max(one - per_trial, 0)  # what does not grow with the pack (the batch, the workspace)
    fits = int((free * headroom - base) // per_trial)
    return max(1, min(limit, fits))


def _peak_step_bytes(config: TrainConfig, data: DetectionData, k: int, device: torch.device) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model = build_detector(config.model, nc=len(data.names), trials=k).to(device)
    model.train()
    weights = LossWeights.of(config)
    losses = [DetectionLoss(model, weights) for _ in range(k)]
    batches = iterate_batches(
        data.train, config.batch, shuffle=False, augment=False, generator=torch.Generator()
    )
    images, targets, _ = next(iter(batches))
    images, targets = images.to(device), targets.to(device)
    outputs = model(images)
    if k == 1:
        outputs = [o.unsqueeze(0) for o in outputs]
    total = torch.stack(
        [loss([o[i] for o in outputs], targets).total for i, loss in enumerate(losses)]
    )
    total.sum().backward()
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, outputs, total
    torch.cuda.empty_cache()
    return int(peak)
