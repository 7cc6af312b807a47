"""A compact anchor-based YOLO-style detector, written from scratch (YOLOv5 v6 layout).

Backbone: Conv-BN-SiLU stem and C3 (CSP bottleneck) stages down to stride 32, closed by SPPF.
Neck: a top-down FPN and a bottom-up PAN, one C3 after each merge. Head: one 1x1 conv per level
predicting, for each of 3 anchors, `(tx, ty, tw, th, objectness, nc class logits)` at strides
8, 16 and 32. Sizes differ only in depth/width multipliers (`SIZES`):

- `nano`: width 1/8 of YOLOv5's base (8..128 channels), for fast CPU trials at 128 px;
- `small`: YOLOv5n's multipliers (width 1/4);
- `medium`: YOLOv5s-like width with two thirds depth, several GFLOPs per 640 px image: a model that
  keeps a GPU busy.

Anchors (`ANCHORS`) are YOLOv5's P3-P5 anchors scaled by 1/2: the trainer's images are 128-640 px
with objects of roughly 8-120 px, and YOLOv5's own anchors (tuned for COCO at 640 px, up to
373 px) would put most such objects on all three levels. With the wh-ratio < 4 match rule of the
loss, these cover objects from about 2 px (P3) to about 740 px (P5).

Outputs are raw (no sigmoid); `decode` turns them into boxes with YOLOv5's v5+ parameterisation.

`trials=K` builds K independent copies fused into one network, as HFTA does (the packed trainer,
`trainer.packed`): every convolution has K times the channels in K groups, BatchNorm K times the
channels (so each copy keeps its own statistics), concatenations interleave per copy, and every
parameter holds the K copies end to end along dim 0. Nothing mixes the copies; `trials=1` is
the plain detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

# size -> (depth multiple, width multiple), as in YOLOv5's model yamls
SIZES: dict[str, tuple[float, float]] = {
    "nano": (0.33, 0.125),
    "small": (0.33, 0.25),
    "medium": (0.67, 0.5),
}

STRIDES: tuple[int, ...] = (8, 16, 32)

# pixels of the network input, one row per level (P3, P4, P5), 3 anchors each: YOLOv5's / 2
ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((5.0, 6.5), (8.0, 15.0), (16.5, 11.5)),
    ((15.0, 30.5), (31.0, 22.5), (29.5, 59.5)),
    ((58.0, 45.0), (78.0, 99.0), (186.5, 163.0)),
)


def _make_divisible(channels: float, divisor: int = 8) -> int:
    return max(divisor, int(math.ceil(channels / divisor) * divisor))


def cat_channels(tensors: Sequence[Tensor], trials: int = 1) -> Tensor:
    """Concatenate along channels, each of `trials` fused copies with its own channels."""
    if trials == 1:
        return torch.cat(tuple(tensors), 1)
    return torch.cat([t.unflatten(1, (trials, -1)) for t in tensors], 2).flatten(1, 2)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, padded to keep `H / stride`."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, trials: int = 1
    ) -> None:
        super().__init__()
        pad = k // 2 if p is None else p
        self.conv = nn.Conv2d(c1 * trials, c2 * trials, k, s, pad, groups=trials, bias=False)
        # YOLOv5's BN settings: eps 1e-3, momentum 0.03
        self.bn = nn.BatchNorm2d(c2 * trials, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv, with a residual connection when shapes allow and `shortcut` is set."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, trials: int = 1) -> None:
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, trials=trials)
        self.cv2 = Conv(c2, c2, 3, trials=trials)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: half the channels go through `n` bottlenecks, half bypass."""

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = True, trials: int = 1
    ) -> None:
        super().__init__()
        c_ = c2 // 2
        self.trials = trials
        self.cv1 = Conv(c1, c_, 1, trials=trials)
        self.cv2 = Conv(c1, c_, 1, trials=trials)
        self.cv3 = Conv(2 * c_, c2, 1, trials=trials)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, trials) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(cat_channels((self.m(self.cv1(x)), self.cv2(x)), self.trials))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5, trials: int = 1) -> None:
        super().__init__()
        c_ = c1 // 2
        self.trials = trials
        self.cv1 = Conv(c1, c_, 1, trials=trials)
        self.cv2 = Conv(c_ * 4, c2, 1, trials=trials)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(cat_channels((x, y1, y2, self.m(y2)), self.trials))


class Detector(nn.Module):
    """YOLO-style detector returning raw per-anchor predictions at strides 8, 16, 32.

    `forward(x)` with `x` of shape `[B, 3, S, S]` (S a multiple of 32) returns one tensor per
    level shaped `[B, na, S/stride, S/stride, 5 + nc]`: `(tx, ty, tw, th, obj, cls...)` logits.
    With `trials=K > 1` (K fused copies, see the module docstring) every copy sees the same `x`,
    or, given `x` of `[B, 3K, S, S]`, copy k sees channels `3k:3k+3`; each level is
    `[K, B, na, S/stride, S/stride, 5 + nc]`.
    """

    anchors: Tensor  # [nl, na, 2] pixels (a buffer: moves with .to(), saved in the state_dict)

    def __init__(
        self,
        nc: int,
        depth: float,
        width: float,
        anchors: Sequence[Sequence[tuple[float, float]]] = ANCHORS,
        trials: int = 1,
    ) -> None:
        super().__init__()
        if nc < 1:
            raise ValueError(f"nc must be >= 1, but got {nc=}")
        if trials < 1:
            raise ValueError(f"trials must be >= 1, but got {trials=}")
        self.nc = nc
        self.trials = trials
        self.strides: tuple[int, ...] = STRIDES
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        if self.anchors.ndim != 3 or self.anchors.shape[0] != len(self.strides):
            raise ValueError(f"anchors must be [{len(self.strides)}, na, 2], but got {anchors=}")
        self.na = self.anchors.shape[1]
        self.no = 5 + nc

        def ch(c: int) -> int:
            return _make_divisible(c * width)

        def n(k: int) -> int:
            return max(round(k * depth), 1)

        c64, c128, c256, c512, c1024 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        t = trials
        # backbone
        self.stem = Conv(3, c64, 6, 2, 2, trials=t)  # P1/2
        self.stage2 = nn.Sequential(
            Conv(c64, c128, 3, 2, trials=t), C3(c128, c128, n(3), trials=t)
        )  # P2/4
        self.stage3 = nn.Sequential(
            Conv(c128, c256, 3, 2, trials=t), C3(c256, c256, n(6), trials=t)
        )  # P3/8
        self.stage4 = nn.Sequential(
            Conv(c256, c512, 3, 2, trials=t), C3(c512, c512, n(9), trials=t)
        )  # P4/16
        self.stage5 = nn.Sequential(
            Conv(c512, c1024, 3, 2, trials=t),
            C3(c1024, c1024, n(3), trials=t),
            SPPF(c1024, c1024, trials=t),
        )  # P5/32
        # neck: top-down (FPN) then bottom-up (PAN)
        self.lat5 = Conv(c1024, c512, 1, trials=t)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C3(c512 * 2, c512, n(3), shortcut=False, trials=t)
        self.lat4 = Conv(c512, c256, 1, trials=t)
        self.td3 = C3(c256 * 2, c256, n(3), shortcut=False, trials=t)  # -> P3 out
        self.down3 = Conv(c256, c256, 3, 2, trials=t)
        self.bu4 = C3(c256 * 2, c512, n(3), shortcut=False, trials=t)  # -> P4 out
        self.down4 = Conv(c512, c512, 3, 2, trials=t)
        self.bu5 = C3(c512 * 2, c1024, n(3), shortcut=False, trials=t)  # -> P5 out
        # head: one 1x1 conv per level
        self.head = nn.ModuleList(
            nn.Conv2d(c * t, self.na * self.no * t, 1, groups=t) for c in (c256, c512, c1024)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.SiLU):
                m.inplace = True
        # YOLOv5's prior: ~8 objects per 640 px image spread over the level's grid, and class
        # probability 0.6/(nc - 0.99), so the first iterations don't push huge gradients.
        with torch.no_grad():
            for conv, stride in zip(self.head, self.strides, strict=True):
                assert isinstance(conv, nn.Conv2d) and conv.bias is not None
                b = conv.bias.view(self.trials, self.na, self.no)
                b[..., 4] += math.log(8 / (640 / stride) ** 2)
                b[..., 5:] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, x: Tensor) -> list[Tensor]:
        t = self.trials
        if t > 1 and x.shape[1] == 3:  # every copy sees the same images: [B, K * 3, S, S]
            x = x.repeat(1, t, 1, 1)
        x = self.stage2(self.stem(x))
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        l5 = self.lat5(p5)
        t4 = self.td4(cat_channels((self.up(l5), p4), t))
        l4 = self.lat4(t4)
        o3 = self.td3(cat_channels((self.up(l4), p3), t))
        o4 = self.bu4(cat_channels((self.down3(o3), l4), t))
        o5 = self.bu5(cat_channels((self.down4(o4), l5), t))
        outputs = []
        for conv, feat in zip(self.head, (o3, o4, o5), strict=True):
            y = conv(feat)
            b, _, h, w = y.shape
            # [B, na*no, H, W] -> [B, na, H, W, no]; a view, so channels_last input stays cheap
            if t == 1:
                outputs.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2))
            else:  # [B, K*na*no, H, W] -> [K, B, na, H, W, no]
                outputs.append(y.view(b, t, self.na, self.no, h, w).permute(1, 0, 2, 4, 5, 3))
        return outputs


def build_detector(size: str, nc: int, trials: int = 1) -> Detector:
    """A randomly initialised detector of the given size (`nano`, `small` or `medium`);
    `trials=K` fuses K copies into one network (see the module docstring)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, but got {size=}")
    depth, width = SIZES[size]
    return Detector(nc=nc, depth=depth, width=width, trials=trials)


def _grid(h: int, w: int, device: torch.device) -> Tensor:
    """Cell coordinates `[H, W, 2]` as (x, y)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((xs, ys), -1)


def decode(
    detector_or_anchors_and_strides: Detector | tuple[Tensor, Sequence[int]],
    outputs: Sequence[Tensor],
) -> Tensor:
    """Raw outputs to `[B, N, 5 + nc]`: `(x1, y1, x2, y2)` in input pixels, objectness and class
    probabilities. N is the sum of `na * H * W` over levels, in level, anchor, row, column order.

    xy = (sigmoid * 2 - 0.5 + grid) * stride, wh = (sigmoid * 2)^2 * anchor (YOLOv5 v5+).
    """
    strides: Sequence[int]
    if isinstance(detector_or_anchors_and_strides, Detector):
        anchors, strides = (
            detector_or_anchors_and_strides.anchors,
            detector_or_anchors_and_strides.strides,
        )
    else:
        anchors, strides = detector_or_anchors_and_strides
    if len(outputs) != len(strides):
        raise ValueError(f"expected {len(strides)} output levels, but got {len(outputs)=}")
    decoded = []
    for out, stride, anchor in zip(outputs, strides, anchors, strict=True):
        b, na, h, w, no = out.shape
        y = out.float().sigmoid()
        grid = _grid(h, w, out.device).view(1, 1, h, w, 2)
        xy = (y[..., 0:2] * 2 - 0.5 + grid) * stride
        wh = (y[..., 2:4] * 2) ** 2 * anchor.to(out.device).view(1, na, 1, 1, 2)
        boxes = torch.cat((xy - wh / 2, xy + wh / 2, y[..., 4:]), -1)
        decoded.append(boxes.reshape(b, na * h * w, no))
    return torch.cat(decoded, 1)


def load_weights(detector: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into `detector` (in place).

    Accepts a bare state_dict or a checkpoint dict holding one under `model` or `state_dict`.
    `module.` and `_orig_mod.` prefixes (DDP, torch.compile) are stripped. Raises `ValueError`
    naming the first key whose shape differs, and listing missing or unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; name the file either way
        raise ValueError(f"cannot read weights from {path}: {exc}") from exc
    state = loaded
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict (expected a dict of tensors)")
    state = {_strip_prefixes(k): v for k, v in state.items()}
    own = detector.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"shape mismatch loading {path}: {key} is {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model (other size or number of classes?)"
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"keys differ loading {path}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    detector.load_state_dict(state)


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def forward_gflops(detector: nn.Module, imgsz: int) -> float:
    """Forward GFLOPs for one `imgsz` x `imgsz` image (multiply-add = 2 FLOPs), counted by torch."""
    param = next(detector.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            detector(x)
    finally:
        detector.train(was_training)
    return counter.get_total_flops() / 1e9
