"""A user's own trainer, as the command trainer's tests run it: plain Python, no torch.

It prints the notes' training lines, writes evaluation lines to the metrics file by hand
(`$TUNE_METRICS`), and misbehaves as asked: `command_script.py MODE [--lr0 X] [--hold]`.

    ok        3 iterations and one evaluation per epoch, `$TUNE_EPOCHS` epochs
    file      as ok, with the training lines in the metrics file too (with components)
    slow      as ok but 0.2 s per epoch and endless
    stubborn  as slow, ignoring SIGTERM (only SIGKILL ends it)
    selfkill  one evaluation, then SIGKILL to itself
    hang      one line, then silence
    crash     one evaluation, a traceback, exit 3
    late      as ok, saving OUT/last.pt 0.3 s after each evaluation line

These and the three below train for $SCRIPT_EPOCH_SECONDS (0.5) per epoch, in which the last
checkpoint rests untouched, as a real training script's does.
    chunks    as ok, writing a new OUT/last.pt after each evaluation line in slow chunks
    inplace   as ok, truncating OUT/last.pt after each evaluation line and rewriting it in chunks
    renamed   as ok, writing OUT/last.pt.tmp, renaming it to last.pt, then naming it in the
              evaluation line (the documented safe way)
    never     as ok, never writing a checkpoint

A checkpoint of those is `step N`, padding, `end N`: whole only when both ends agree. With
`--resume` they continue from OUT/last.pt, after checking it is whole (exit 4 if not), and write
the step they resumed from to OUT/resumed.txt. Their process group is in OUT/pgid.

All but ok, file and badline start a child that would outlive them (pids in OUT/pids.json).
    badline   one evaluation, then a line that is not JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback


def main() -> None:
    mode = sys.argv[1]
    lr0 = float(sys.argv[sys.argv.index("--lr0") + 1]) if "--lr0" in sys.argv else 0.01
    saves = mode in CHECKPOINT_MODES
    epochs = int(os.environ["TUNE_EPOCHS"]) if mode in ("ok", "file", "late") or saves else 10_000
    out = os.environ["TUNE_OUT"]
    first = 1
    if saves:
        with open(os.path.join(out, "pgid"), "w") as f:
            f.write(str(os.getpgid(0)))
        if "--resume" in sys.argv:
            first = resumed_step(os.path.join(out, "last.pt")) + 1
            with open(os.path.join(out, "resumed.txt"), "w") as f:
                f.write(str(first - 1))
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("slow", "stubborn", "hang", "selfkill", "crash"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.path.join(out, "pids.json"), "w") as f:
            json.dump({"pgid": os.getpgid(0), "pid": os.getpid(), "child": child.pid}, f)
    if mode == "hang":
        print("loading data", flush=True)
        time.sleep(120)
    it = 3 * (first - 1)
    with open(os.environ["TUNE_METRICS"], "a") as metrics:
        for epoch in range(first, epochs + 1):
            if saves or mode == "late":  # training, in which the last checkpoint rests
                time.sleep(float(os.environ.get("SCRIPT_EPOCH_SECONDS", "0.5")))
            for _ in range(3):
                it += 1
                lbox, lcls = 1.0 / (1 + it * lr0), 0.5 / (1 + it)
                loss = 0.05 * lbox + 0.5 * lcls
                print(f"epoch {epoch} / iter {it} lr {lr0:.5f} , loss {loss:.5f} latency 0.01000")
                if mode == "file":
                    line = {"epoch": epoch, "iter": it, "lr": lr0, "loss": loss, "lbox": lbox}
                    metrics.write(json.dumps({**line, "lcls": lcls, "latency": 0.01}) + "\n")
            evaluation = {"step": epoch, "iter": it, "mAP50_95": epoch * lr0, "mAP50": 0.5}
            if mode == "renamed":
                write_checkpoint(os.path.join(out, "last.pt.tmp"), epoch, pause=0.0)
                os.replace(os.path.join(out, "last.pt.tmp"), os.path.join(out, "last.pt"))
                evaluation["checkpoint"] = "last.pt"
            metrics.write(json.dumps({**evaluation, "val_lbox": lbox, "val_lcls": lcls}) + "\n")
            metrics.flush()
            if mode == "chunks":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(out, "last.pt"))
                write_checkpoint(os.path.join(out, "last.pt"), epoch, pause=0.1)
            if mode == "inplace":
                write_checkpoint(os.path.join(out, "last.pt"), epoch, pause=0.1, mode="a+")
            if mode == "late":
                time.sleep(0.3)
                with open(os.path.join(out, "last.pt"), "w") as f:
                    f.write(f"step {epoch}")
            if mode == "selfkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "crash":
                try:
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                except RuntimeError:
                    traceback.print_exc()
                sys.exit(3)
            if mode == "badline":
                metrics.write('{"step": 2, "mAP50_95": oops}\n')
                metrics.flush()
                time.sleep(30)
            if mode in ("slow", "stubborn"):
                time.sleep(0.2)


CHECKPOINT_MODES = ("chunks", "inplace", "renamed", "never")
_PAD = "x" * 4000


def write_checkpoint(path: str, step: int, pause: float, mode: str = "w") -> None:
    """`step N`, padding, `end N`, in five flushed chunks `pause` seconds apart; mode "a+"
    keeps the inode and truncates, as a rewrite in place does."""
    text = f"step {step}\n{_PAD}\nend {step}\n"
    with open(path, mode) as f:
        f.seek(0)
        f.truncate()
        for i in range(5):
            f.write(text[i * len(text) // 5 : (i + 1) * len(text) // 5])
            f.flush()
            time.sleep(pause)


def whole_step(text: str) -> int | None:
    """The step of a checkpoint `write_checkpoint` finished, None for a torn one."""
    lines = text.split("\n")
    if len(lines) != 4 or not lines[0].startswith("step ") or lines[3] != "":
        return None
    step = lines[0].removeprefix("step ")
    return int(step) if lines[2] == f"end {step}" and lines[1] == _PAD else None


def resumed_step(path: str) -> int:
    with open(path) as f:
        step = whole_step(f.read())
    if step is None:
        print(f"{path} is torn", flush=True)
        sys.exit(4)
    return step


if __name__ == "__main__":
    main()
