"""The detector: shapes per size, decoding, gradients, channels_last, weight loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.loss import DetectionLoss, LossWeights
from trainer.model import SIZES, Detector, build_detector, decode, forward_gflops, load_weights


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("nc", [1, 3])
def test_output_shapes_per_size_and_nc(size: str, nc: int) -> None:
    model = build_detector(size, nc)
    outputs = model(torch.zeros(2, 3, 64, 64))
    assert model.nc == nc
    assert model.strides == (8, 16, 32)
    assert model.anchors.shape == (3, 3, 2)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, 64 // s, 64 // s, 5 + nc) for s in model.strides
    ]


def test_sizes_grow_in_cost() -> None:
    nano, small, medium = (build_detector(s, 3) for s in ("nano", "small", "medium"))
    flops = [forward_gflops(m, 128) for m in (nano, small, medium)]
    assert flops[0] < flops[1] < flops[2]
    # the GPU size does several GFLOPs per 640 px image
    assert forward_gflops(medium, 640) > 5


def test_unknown_size_is_named() -> None:
    with pytest.raises(ValueError, match="size='huge'"):
        build_detector("huge", 3)


def test_bias_prior_matches_yolov5() -> None:
    nc = 4
    model = build_detector("nano", nc).eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64))
    for out, stride in zip(outputs, model.strides, strict=True):
        obj = out[..., 4].sigmoid().mean().item()
        cls = out[..., 5:].sigmoid().mean().item()
        # the prior is on the bias; features add some spread around it
        assert obj == pytest.approx(8 / (640 / stride) ** 2, rel=0.5)
        assert cls == pytest.approx(0.6 / (nc - 0.99), rel=0.3)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_inverts_a_hand_made_prediction() -> None:
    model = build_detector("nano", 2)
    outputs = [torch.full((1, 3, 64 // s, 64 // s, 7), -20.0) for s in model.strides]
    # a 12 x 20 px box centred at (21, 13) px, predicted by P4 (stride 16) anchor 1 in cell (1, 0)
    level, anchor, gi, gj = 1, 1, 1, 0
    stride = model.strides[level]
    aw, ah = model.anchors[level, anchor].tolist()
    cx, cy, w, h = 21.0, 13.0, 12.0, 20.0
    raw = outputs[level][0, anchor, gj, gi]
    raw[0] = _logit((cx / stride - gi + 0.5) / 2)
    raw[1] = _logit((cy / stride - gj + 0.5) / 2)
    raw[2] = _logit(math.sqrt(w / aw) / 2)
    raw[3] = _logit(math.sqrt(h / ah) / 2)
    raw[4], raw[5], raw[6] = _logit(0.9), _logit(0.2), _logit(0.7)

    for source in (model, (model.anchors, model.strides)):
        decoded = decode(source, outputs)
        assert decoded.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 7)
        index = 3 * 8 * 8 + anchor * 4 * 4 + gj * 4 + gi  # level, anchor, row, column order
        expected = torch.tensor([15.0, 3.0, 27.0, 23.0, 0.9, 0.2, 0.7])
        torch.testing.assert_close(decoded[0, index], expected, atol=1e-4, rtol=1e-4)
        assert decoded[..., 4].gt(0.5).sum() == 1


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_detector("nano", 3).train()
    loss = DetectionLoss(model, LossWeights(lbox=0.05, lobj=1.0, lcls=0.5))
    targets = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [1, 2, 0.7, 0.6, 0.5, 0.4]])
    loss(model(torch.randn(2, 3, 64, 64)), targets).total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_channels_last_forward_equals_default() -> None:
    torch.manual_seed(0)
    model = build_detector("nano", 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        # torch's stubs lack Module.to(memory_format=...), which exists at run time
        model_cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def _detector_outputs(model: Detector) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(torch.ones(1, 3, 64, 64))


def test_load_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_detector("nano", 3)
    torch.manual_seed(1)
    bare, wrapped = build_detector("nano", 3), build_detector("nano", 3)
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    load_weights(bare, tmp_path / "bare.pt")
    load_weights(wrapped, tmp_path / "ckpt.pt")
    expected = _detector_outputs(source)
    for model in (bare, wrapped):
        for e, g in zip(expected, _detector_outputs(model), strict=True):
            torch.testing.assert_close(g, e)


def test_load_weights_names_the_first_mismatched_key(tmp_path: Path) -> None:
    torch.save(build_detector("nano", 3).state_dict(), tmp_path / "nc3.pt")
    with pytest.raises(ValueError, match=r"head\.0\.weight"):
        load_weights(build_detector("nano", 5), tmp_path / "nc3.pt")
    with pytest.raises(ValueError, match=r"stem\.conv\.weight"):
        load_weights(build_detector("small", 3), tmp_path / "nc3.pt")


def test_load_weights_rejects_missing_file_and_foreign_content(tmp_path: Path) -> None:
    model = build_detector("nano", 3)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_weights(model, tmp_path / "absent.pt")
    torch.save({"stem.conv.weight": torch.zeros(8, 3, 6, 6)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing"):
        load_weights(model, tmp_path / "partial.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_weights(model, tmp_path / "junk.pt")
