"""One training run on CUDA in its own process, printed as one JSON line (the H200 probe).

    OMP_NUM_THREADS=1 uv run python -m bench.gpu_probe nano 4 nano1
    # four at once, to see how trials share a GPU (start MPS first: nvidia-cuda-mps-control -d)
    for i in 1 2 3 4; do uv run python -m bench.gpu_probe nano 2 mps$i & done; wait

Arguments: model, epochs, a tag naming the run (its folder is /tmp/r-TAG). One torch thread, the
trainer's defaults otherwise (128 px, batch 32). docs/benchmarks.md ("GPU (H200)") shows results.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from trainer.config import TrainConfig
from trainer.fit import fit

FIELDS = (
    "tag",
    "wall",
    "seconds_training",
    "seconds_evaluating",
    "images_per_second",
    "train_latency",
    "inference_ms",
    "iterations",
    "mAP50_95",
)


def main(argv: list[str]) -> None:
    model, epochs, tag = argv[0], int(argv[1]), argv[2]
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = fit(
        TrainConfig(
            model=model, epochs=epochs, device="cuda", out=f"/tmp/r-{tag}", log_interval=1000
        )
    ).to_dict()
    result.update(wall=time.perf_counter() - started, tag=tag)
    print(json.dumps({key: result[key] for key in FIELDS}))


if __name__ == "__main__":
    main(sys.argv[1:])
