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
    late      as ok, saving OUT/last.pt 0.3 s after each evaluation line (as tune train does)

All but ok, file and badline start a child that would outlive them (pids in OUT/pids.json).
    badline   one evaluation, then a line that is not JSON
"""

from __future__ import annotations

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
    epochs = int(os.environ["TUNE_EPOCHS"]) if mode in ("ok", "file", "late") else 10_000
    out = os.environ["TUNE_OUT"]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("slow", "stubborn", "hang", "selfkill", "crash"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.path.join(out, "pids.json"), "w") as f:
            json.dump({"pgid": os.getpgid(0), "pid": os.getpid(), "child": child.pid}, f)
    if mode == "hang":
        print("loading data", flush=True)
        time.sleep(120)
    it = 0
    with open(os.environ["TUNE_METRICS"], "a") as metrics:
        for epoch in range(1, epochs + 1):
            for _ in range(3):
                it += 1
                lbox, lcls = 1.0 / (1 + it * lr0), 0.5 / (1 + it)
                loss = 0.05 * lbox + 0.5 * lcls
                print(f"epoch {epoch} / iter {it} lr {lr0:.5f} , loss {loss:.5f} latency 0.01000")
                if mode == "file":
                    line = {"epoch": epoch, "iter": it, "lr": lr0, "loss": loss, "lbox": lbox}
                    metrics.write(json.dumps({**line, "lcls": lcls, "latency": 0.01}) + "\n")
            evaluation = {"step": epoch, "iter": it, "mAP50_95": epoch * lr0, "mAP50": 0.5}
            metrics.write(json.dumps({**evaluation, "val_lbox": lbox, "val_lcls": lcls}) + "\n")
            metrics.flush()
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


if __name__ == "__main__":
    main()
