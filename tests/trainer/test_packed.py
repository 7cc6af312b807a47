"""Trial packing: a packed trial trains as it would alone, fails alone, and resumes alone or
packed from its checkpoint; configs that cannot share a pack are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer.fit
import trainer.packed
import trainer.packed_state
from trainer.config import TrainConfig
from trainer.data import DetectionData, load_data
from trainer.fit import fit
from trainer.model import Detector, build_detector
from trainer.packed import PackMember, fit_pack, fit_packed
from trainer.packed_state import load_trial_state, packed_names, trial_state_dict
from trainer.records import EvalReport, FitResult, NonFiniteLossError
from trainer.shapes import shapes_yaml


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_yaml(tmp_path_factory.mktemp("cache"), n_train=32, n_val=4)


@pytest.fixture(scope="module")
def data64(data_yaml: Path) -> DetectionData:
    return load_data(str(data_yaml), imgsz=64)


def _config(data_yaml: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data_yaml), model="nano", imgsz=64, batch=8, epochs=2, device="cpu",
        log_interval=1, ema_tau=5.0,
    )  # fmt: skip
    return base.replace(out=str(out), **changes)


def _train_lines(run: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # latency is wall time: everything else a line holds is compared
    return [{k: v for k, v in line.items() if k != "latency"} for line in lines if "lr" in line]


def _eval_lines(run: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "mAP50" in line]


def test_packed_weights_are_the_solo_weights_laid_end_to_end() -> None:
    solos = []
    for seed in (3, 4, 5):
        torch.manual_seed(seed)
        solos.append(build_detector("nano", nc=2))
    packed = build_detector("nano", nc=2, trials=3)
    names = packed_names(packed, solos[0])
    assert "anchors" not in names and "stem.conv.weight" in names
    for k, solo in enumerate(solos):
        load_trial_state(packed, k, solo.state_dict(), names)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outputs = packed.eval()(x)
        for k, solo in enumerate(solos):
            got = trial_state_dict(packed.state_dict(), k, 3, names)
            assert all(torch.equal(got[n], v) for n, v in solo.state_dict().items())
            for level, expected in zip(outputs, solo.eval()(x), strict=True):
                torch.testing.assert_close(level[k], expected, rtol=1e-4, atol=1e-4)


# 20 iterations (5 epochs of 4 batches), three optimizers, loss weights, nominal batches and
# schedules, one seed (so one batch stream: each trial's solo run draws the same batches)
EQUIVALENT_TRIALS: list[dict[str, object]] = [
    dict(),  # the recipe: AdamW lr 0.01, nominal batch 64 (accumulation ramps up), EMA
    dict(optimizer="SGD", lr=0.001, lbox=0.1, lobj=0.1, lcls=0.1, nbs=8, milestones=(10,)),
    dict(optimizer="Adam", lr=0.001, lcls=0.5, nbs=16, ema_decay=0.0),
]


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit and the pack build float64 detectors (their inputs cast on the way in, the loss
    computed in the outputs' float64), so rounding is 1e-16 instead of 1e-7."""

    def build(size: str, nc: int, trials: int = 1) -> Detector:
        model = build_detector(size, nc=nc, trials=trials).double()
        model.register_forward_pre_hook(lambda _, args: tuple(a.double() for a in args))
        return model

    for module in (trainer.fit, trainer.packed, trainer.packed_state):
        monkeypatch.setattr(module, "build_detector", build)


def _pack_and_solo_curves(
    data_yaml: Path, data: DetectionData, root: Path
) -> list[tuple[list[dict[str, float]], list[dict[str, float]]]]:
    """(packed, solo) training lines of each of EQUIVALENT_TRIALS, trained as one pack of
    three and alone."""
    configs = [
        _config(data_yaml, root / f"pack{k}", epochs=5, eval_interval=5, **kw)
        for k, kw in enumerate(EQUIVALENT_TRIALS)
    ]
    results = fit_packed(configs, data=data)
    curves = []
    for k, (config, packed) in enumerate(zip(configs, results, strict=True)):
        solo = fit(config.replace(out=str(root / f"solo{k}")), data=data)
        assert isinstance(packed, FitResult), packed
        assert packed.iterations == solo.iterations == 20
        a, b = _train_lines(root / f"pack{k}"), _train_lines(root / f"solo{k}")
        assert len(a) == len(b) == 20
        assert [x["lr"] for x in a] == pytest.approx([x["lr"] for x in b], rel=1e-12)
        curves.append((a, b))
    return curves


@pytest.mark.usefixtures("float64")
def test_a_packed_trial_follows_its_solo_loss_curve_in_float64(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    # In float64 a packed trial is its solo run to 1e-9 over the 20 iterations (measured: equal
    # to the bit). The packed model differs from K solo models only in rounding: its forward is
    # the solo one to the bit, and the grouped convolutions' and BatchNorms' backward sum in
    # another order (weight gradients off by ~1e-14 of their scale in float64, ~1e-5 in
    # float32, channels_last on the CPU). A trial that trains hard enough amplifies even
    # 1e-14 (SGD at lr 0.01 with loss weights 0.5 / 1.0: 1e-2 by iteration 20, and a solo run
    # whose initial weights are scaled by 1 + 1e-15 drifts alike), so the trials here train at
    # a pace where float64 holds.
    for k, (packed, solo) in enumerate(_pack_and_solo_curves(data_yaml, data64, tmp_path)):
        for name in ("loss", "lbox", "lobj", "lcls"):
            got, expected = [x[name] for x in packed], [x[name] for x in solo]
            assert got == pytest.approx(expected, rel=1e-9), (k, name)
        # and its evaluation, made for the three at once in one pass of the fused model (of
        # its EMA for two trials, of its own weights for the third), is its solo one: the
        # same mAP and validation losses
        (got_eval,) = _eval_lines(tmp_path / f"pack{k}")
        (expected_eval,) = _eval_lines(tmp_path / f"solo{k}")
        assert got_eval == pytest.approx(expected_eval, rel=1e-9), k


def test_a_packed_trial_follows_its_solo_loss_curve_in_float32(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    # The same trials in float32: the gradients' rounding (~1e-5 of their scale, see above)
    # is amplified by training, as the float64 run shows it is nothing else. Measured over
    # seeds 0-2: the curves agree to 2e-6 for 4 iterations, and by iteration 20 drift up to
    # 2.2e-2 in the total and 6.2e-2 in a component.
    curves = _pack_and_solo_curves(data_yaml, data64, tmp_path)
    for k, (packed, solo) in enumerate(curves):
        for name in ("loss", "lbox", "lobj", "lcls"):
            got, expected = [x[name] for x in packed], [x[name] for x in solo]
            assert got[:4] == pytest.approx(expected[:4], rel=1e-5), (k, name)
            drift = 5e-2 if name == "loss" else 0.15
            assert got == pytest.approx(expected, rel=drift), (k, name)
    # without grouped convolutions nothing differs: a pack of one is its solo run to the bit
    # (the packed optimizer rounds as torch's, trainer.packed_optim)
    config = _config(data_yaml, tmp_path / "one", epochs=5, eval_interval=5, **EQUIVALENT_TRIALS[1])
    (one,) = fit_packed([config], data=data64)
    assert isinstance(one, FitResult)
    assert _train_lines(tmp_path / "one") == curves[1][1]
    assert _eval_lines(tmp_path / "one") == _eval_lines(tmp_path / "solo1")


def test_a_failing_trial_stops_alone(
    data_yaml: Path, data64: DetectionData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what the fused evaluations run: a failed trial's slot is zeroed in the EMA too, so its
    # huge or NaN weights never pass through the fused model again (compact=False: a shrunk
    # pack would drop the slot)
    failed_slot_zero: list[bool] = []

    def evaluate_slots(model: Detector, *args: Any, **kwargs: Any) -> Any:
        stem = model.state_dict()["stem.conv.weight"].unflatten(0, (3, -1))
        failed_slot_zero.append(bool((stem[2] == 0).all()))
        return real_evaluate_slots(model, *args, **kwargs)

    real_evaluate_slots = trainer.packed.evaluate_slots
    monkeypatch.setattr(trainer.packed, "evaluate_slots", evaluate_slots)
    real_fit_pack = trainer.packed.fit_pack
    monkeypatch.setattr(
        trainer.packed, "fit_pack", lambda *a, **kw: real_fit_pack(*a, **kw, compact=False)
    )
    stopped = RuntimeError("pruned")
    seen: dict[int, list[int]] = {0: [], 1: []}

    def report_of(k: int, stop: bool):  # type: ignore[no-untyped-def]
        def report(step: int, metrics: EvalReport) -> None:
            seen[k].append(step)
            assert metrics.train and metrics.eval.epoch == step
            if stop:
                raise stopped

        return report

    configs = [
        _config(data_yaml, tmp_path / "ok"),
        _config(data_yaml, tmp_path / "pruned", optimizer="Adam", lr=0.001),
        # SGD at lr 1e30 sends the loss to inf / NaN within the first epoch
        _config(data_yaml, tmp_path / "nan", optimizer="SGD", lr=1e30, warmup_iters=0),
    ]
    results = fit_packed(configs, [report_of(0, False), report_of(1, True), None], data=data64)
    ok, pruned, nan = results
    assert isinstance(ok, FitResult) and ok.epochs_completed == 2 and seen[0] == [1, 2]
    assert pruned is stopped and seen[1] == [1]
    assert (tmp_path / "pruned" / "last.pt").exists()  # saved before the report, as fit does
    assert isinstance(nan, NonFiniteLossError)
    assert not (tmp_path / "nan" / "last.pt").exists()
    assert ok.mAP50_95 >= 0 and (tmp_path / "ok" / "summary.json").exists()
    assert failed_slot_zero == [False, True]  # at epoch 1 (where the NaN trial fails) and 2


def test_a_packed_trial_resumes_packed_exactly_and_alone(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    def configs(root: Path) -> list[TrainConfig]:
        return [
            _config(data_yaml, root / "a", epochs=3),
            _config(data_yaml, root / "b", epochs=3, optimizer="SGD", lr=0.01, nbs=16),
        ]

    whole = fit_packed(configs(tmp_path / "whole"), data=data64)
    assert all(isinstance(r, FitResult) for r in whole)

    def stop_at_2(step: int, metrics: EvalReport) -> None:
        if step == 2:
            raise RuntimeError("stop")

    interrupted = configs(tmp_path / "cut")
    fit_packed(interrupted, [stop_at_2, stop_at_2], data=data64)
    resumed = fit_packed([c.replace(resume=True) for c in interrupted], data=data64)
    assert all(isinstance(r, FitResult) for r in resumed)
    for name in ("a", "b"):
        # the same pack from its checkpoints: the very same numbers
        assert _train_lines(tmp_path / "cut" / name) == _train_lines(tmp_path / "whole" / name)

    fit_packed(configs(tmp_path / "solo"), [stop_at_2, stop_at_2], data=data64)
    alone = fit(configs(tmp_path / "solo")[1].replace(resume=True), data=data64)
    assert alone.epochs_completed == 3 and alone.iterations == 12
    a, b = _train_lines(tmp_path / "solo" / "b"), _train_lines(tmp_path / "whole" / "b")
    assert [x["iter"] for x in a] == [x["iter"] for x in b]
    assert [x["lr"] for x in a] == pytest.approx([x["lr"] for x in b], rel=1e-12)
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-3)


def _lines(run: Path) -> list[dict[str, float]]:
    """Every metrics.jsonl line, training and evaluation, without wall times."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "latency"} for line in lines]


def test_a_freed_slot_is_refilled_at_the_epoch_boundary(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    # A trains 1 epoch, B 2; after the pack's first epoch C takes A's slot and trains its own 2
    # epochs (evaluating every 2nd): SGD after SGD, so A's momentum buffers are in the slot
    def config(name: str, **changes: object) -> TrainConfig:
        return _config(data_yaml, tmp_path / name, **changes)

    a = PackMember(config("a", epochs=1, optimizer="SGD", lr=0.01, nbs=8))
    b = PackMember(config("b", optimizer="Adam", lr=0.001))
    c_config = config("c", eval_interval=2, optimizer="SGD", lr=0.005, nbs=16, seed=7)
    c_steps: list[int] = []
    c = PackMember(c_config, lambda step, metrics: c_steps.append(step))
    waiting, ended = [c], []
    outcomes = fit_pack(
        [a, b],
        refill=lambda: waiting.pop() if waiting else None,
        done=lambda member, outcome: ended.append((member, outcome)),
        data=data64,
        compact=False,  # the slots stay as they are: a shrinking pack differs in rounding
    )
    assert [m for m, _ in ended] == [a, b, c] and [o for _, o in ended] == outcomes
    assert all(isinstance(o, FitResult) for o in outcomes)
    assert [o.epochs_completed for o in outcomes] == [1, 2, 2]  # type: ignore[union-attr]
    assert c_steps == [2]  # its own eval_interval and last epoch
    lines = _train_lines(tmp_path / "c")
    assert [x["iter"] for x in lines] == list(range(1, 9))  # its own epochs, from 0
    assert [x["epoch"] for x in lines] == [0] * 4 + [1] * 4
    checkpoint = torch.load(tmp_path / "c" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (2, 8)
    assert (tmp_path / "c" / "summary.json").exists()

    # trials do not mix: B trains the same whether A's slot is refilled or left empty
    a2, b2 = (m.config.replace(out=m.config.out + "2") for m in (a, b))
    fit_pack([PackMember(a2), PackMember(b2)], data=data64, compact=False)
    assert _lines(tmp_path / "b2") == _lines(tmp_path / "b")

    # C, refilled, is C started in a fresh pack at the same point of the stream (A alone for
    # an epoch; then A resumed, finished at once, leads the stream from its checkpoint): the
    # slot kept nothing of A's weights, BatchNorm statistics, EMA or optimizer state
    fit_pack([PackMember(a.config.replace(out=str(tmp_path / "a3")))], data=data64)
    a3 = a.config.replace(out=str(tmp_path / "a3"), resume=True)
    c3 = c_config.replace(out=str(tmp_path / "c3"))
    fit_pack([PackMember(a3), PackMember(c3)], data=data64, compact=False)
    assert _lines(tmp_path / "c3") == _lines(tmp_path / "c")


@pytest.mark.usefixtures("float64")
def test_a_pack_shrinks_to_its_live_trials_and_they_train_on_as_before(
    data_yaml: Path, data64: DetectionData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A ends after 1 epoch, B after 2, C trains 3 (different optimizers, so the moved optimizer
    # state is each kind's): the pack shrinks from 3 slots to 2, then to 1. Each trial's
    # lines are those of the same pack that keeps its emptied slots zeroed, to the grouped
    # backward's rounding (float64; measured: equal to the bit).
    def members(tag: str) -> list[PackMember]:
        def config(name: str, **changes: object) -> TrainConfig:
            return _config(data_yaml, tmp_path / f"{name}{tag}", **changes)

        return [
            PackMember(config("a", epochs=1, optimizer="SGD", lr=0.01, nbs=8)),
            PackMember(config("b", epochs=2, optimizer="Adam", lr=0.001)),
            PackMember(config("c", epochs=3, optimizer="SGD", lr=0.005, nbs=16, seed=7)),
        ]

    caplog.set_level("INFO", logger="trainer")
    shrunk = fit_pack(members("-shrunk"), data=data64)
    assert [m for m in caplog.messages if "shrinks" in m] == [
        "pack: 2 of 3 slots still training, the fused model shrinks to 2",
        "pack: 1 of 2 slots still training, the fused model shrinks to 1",
    ]
    kept = fit_pack(members("-kept"), data=data64, compact=False)
    for outcomes in (shrunk, kept):
        assert [o.epochs_completed for o in outcomes] == [1, 2, 3]  # type: ignore[union-attr]
    for name in ("a", "b", "c"):
        got, expected = _lines(tmp_path / f"{name}-shrunk"), _lines(tmp_path / f"{name}-kept")
        assert len(got) == len(expected) > 0
        for line, reference in zip(got, expected, strict=True):
            assert line.keys() == reference.keys()
            assert line == pytest.approx(reference, rel=1e-9, abs=1e-12), name
    checkpoint = torch.load(tmp_path / "c-shrunk" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (3, 12)


def test_trials_at_different_epochs_each_get_their_own_mosaic(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    # no mosaic in the last epoch (close_mosaic=1): A (2 epochs) has mosaic in epoch 0, B (3)
    # in epochs 0 and 1, so in the pack's epoch 1 they want different batches
    def config(name: str, epochs: int) -> TrainConfig:
        return _config(data_yaml, tmp_path / name, epochs=epochs, close_mosaic=1, eval_interval=3)

    fit_pack([PackMember(config("a", 2)), PackMember(config("b", 3))], data=data64)
    # A as beside a trial that also wants none in epoch 1 (the stream is A's, the oldest's)
    fit_pack([PackMember(config("a2", 2)), PackMember(config("b2", 2))], data=data64)
    assert _train_lines(tmp_path / "a") == _train_lines(tmp_path / "a2")
    # B, in epochs 0-1, as beside a trial that also wants mosaic in epoch 1 (in epoch 2 the
    # stream goes on from A's draws, not B's)
    fit_pack([PackMember(config("a3", 3)), PackMember(config("b3", 3))], data=data64)
    assert _train_lines(tmp_path / "b")[:8] == _train_lines(tmp_path / "b3")[:8]


def test_a_trial_resumes_in_another_pack_and_slot(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    t = _config(data_yaml, tmp_path / "t", epochs=3, optimizer="SGD", lr=0.01, nbs=16)

    def stop_at_1(step: int, metrics: EvalReport) -> None:
        raise RuntimeError("stop")

    # T is checkpointed after epoch 1 in slot 0 of a pack X ...
    stopped, other = fit_packed(
        [t, _config(data_yaml, tmp_path / "v", epochs=1)], [stop_at_1, None], data=data64
    )
    assert isinstance(stopped, RuntimeError) and isinstance(other, FitResult)
    # ... and resumes in slot 1 of a pack Y, beside a trial at its epoch 0
    u = _config(data_yaml, tmp_path / "u", epochs=2, seed=3)
    fresh, resumed = fit_packed([u, t.replace(resume=True)], data=data64)
    assert isinstance(fresh, FitResult) and fresh.epochs_completed == 2
    assert isinstance(resumed, FitResult)
    assert (resumed.epochs_completed, resumed.iterations) == (3, 12)
    lines = _train_lines(tmp_path / "t")
    assert [x["iter"] for x in lines] == list(range(1, 13))  # X's 4, then Y's 8
    assert [x["epoch"] for x in lines] == [0] * 4 + [1] * 4 + [2] * 4
    # its schedule went on from its checkpoint: the lr of an uninterrupted solo run (the
    # batches are pack Y's, so the losses are not that run's)
    solo = _train_lines(Path(fit(t.replace(out=str(tmp_path / "solo")), data=data64).run_dir))
    assert [x["lr"] for x in lines] == pytest.approx([x["lr"] for x in solo], rel=1e-12)


def test_configs_that_cannot_share_a_pack_are_refused(data_yaml: Path, tmp_path: Path) -> None:
    one = _config(data_yaml, tmp_path / "a")
    with pytest.raises(ValueError, match=r"share imgsz.*trial 1 has imgsz=96"):
        fit_packed([one, one.replace(out=str(tmp_path / "b"), imgsz=96)])
    with pytest.raises(ValueError, match="share batch"):
        fit_packed([one, one.replace(out=str(tmp_path / "b"), batch=4)])
    with pytest.raises(ValueError, match="its own out"):
        fit_packed([one, one.replace(lr=0.1)])
    with pytest.raises(ValueError, match="one report per trial"):
        fit_packed([one], [None, None])


def test_a_refill_that_cannot_share_the_pack_is_refused(
    data_yaml: Path, data64: DetectionData, tmp_path: Path
) -> None:
    one = _config(data_yaml, tmp_path / "a", epochs=1)
    other = one.replace(out=str(tmp_path / "b"), imgsz=96)
    with pytest.raises(ValueError, match=r"share imgsz, but the pack has imgsz=64 .* imgsz=96"):
        fit_pack([PackMember(one)], refill=lambda: PackMember(other), data=data64)
    assert not (tmp_path / "b").exists()  # refused before anything of it was written
