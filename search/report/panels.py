"""The report's panels as data: one `PanelSpec` per panel, one list of them, the grid derived.

A panel is a description (its key, title, y axis, which records and fields it draws, its scale);
`gather` fills one with a line per trial, `draw` places them with `grid_of`, and the page counts
them. The loss panels follow the components the study's trials recorded (`l<c>` in training
lines, `val_l<c>` in evaluations: `search/trainers/base.py`), so tune's detector shows box, cls
and obj, Ultralytics box, cls and dfl, and a command trainer whatever it names. Nothing here
spells a panel twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from search.trainers.base import TRAIN_KEYS, train_key, val_key

Source = Literal["train", "eval"]

# Components every reader knows, in the notes' order (box, cls, obj: the layout the hand-tuning
# notes and tune's report have always had), then Ultralytics' distribution focal loss.
KNOWN_COMPONENTS: dict[str, str] = {"box": "Box", "cls": "Cls", "obj": "Obj", "dfl": "DFL"}
TOTAL_TITLE = "Total loss (weighted: NOT comparable across different loss weights)"


@dataclass(frozen=True)
class PanelSpec:
    """One panel: where its lines come from and how its axis reads.

    `fields` are drawn from each trial's `source` records (its training lines or its
    evaluations), one line per field; a field's variant ("" for the main one) tells two lines of
    one trial apart and is drawn dotted.
    """

    key: str
    title: str
    y_title: str
    source: Source
    fields: tuple[tuple[str, str], ...]  # (record field, variant)
    log_y: bool = False


def component_title(component: str) -> str:
    """A loss component's panel title: the known names capitalised, any other as named."""
    return f"{KNOWN_COMPONENTS.get(component, component)} loss (unweighted)"


def order_components(components: Iterable[str]) -> tuple[str, ...]:
    """The known components in `KNOWN_COMPONENTS`' order, then the others alphabetically: the
    same study draws the same grid every time."""
    found = set(components)
    known = [c for c in KNOWN_COMPONENTS if c in found]
    return (*known, *sorted(found - set(KNOWN_COMPONENTS)))


def _component_of(key: str, prefix: str) -> str | None:
    # `lr`, `loss`, `latency` start with "l" too, and `val_loss` (the weighted validation total)
    # with "val_l": a key is a component's only when it is not one of the training line's own
    if not key.startswith(prefix) or len(key) == len(prefix):
        return None
    component = key[len(prefix) :]
    return None if train_key(component) in TRAIN_KEYS else component


def components_of(
    train_lines: Iterable[Mapping[str, Any]], eval_lines: Iterable[Mapping[str, Any]]
) -> tuple[str, ...]:
    """The loss components these records carry (`l<c>` in training lines, `val_l<c>` in
    evaluations), in the report's order."""
    found = {c for line in train_lines for k in line if (c := _component_of(k, train_key("")))}
    found |= {c for line in eval_lines for k in line if (c := _component_of(k, val_key("")))}
    return order_components(found)


def panel_specs(components: Sequence[str]) -> tuple[PanelSpec, ...]:
    """The report's panels: the evaluation first (it decides), one unweighted loss per component,
    the weighted total (labelled as the trap it is), the learning rate and the latency."""
    evaluation = PanelSpec(
        "eval",
        "Evaluation: mAP50-95 (solid), mAP50 (dotted)",
        "mAP",
        "eval",
        (("mAP50_95", ""), ("mAP50", "mAP50")),
    )
    losses = tuple(
        PanelSpec(c, component_title(c), train_key(c), "train", ((train_key(c), ""),))
        for c in components
    )
    return (
        evaluation,
        *losses,
        PanelSpec("total", TOTAL_TITLE, "weighted loss", "train", (("loss", ""),)),
        PanelSpec("lr", "Learning rate", "lr", "train", (("lr", ""),), log_y=True),
        PanelSpec(
            "latency",
            "Training latency per iteration",
            "seconds / iter",
            "train",
            (("latency", ""),),
        ),
    )


@dataclass(frozen=True)
class Grid:
    """Where each panel sits: `cells` maps a panel key to its (row, column), 1-based."""

    rows: int
    cols: int
    cells: dict[str, tuple[int, int]]

    def specs(self) -> list[list[dict[str, Any] | None]]:
        """`plotly.subplots.make_subplots(specs=...)`: an empty cell is None."""
        taken = set(self.cells.values())
        return [
            [{} if (r, c) in taken else None for c in range(1, self.cols + 1)]
            for r in range(1, self.rows + 1)
        ]


def grid_of(specs: Sequence[PanelSpec], cols: int = 2) -> Grid:
    """The first panel (the evaluation) alone on the first row, the legend in the cells beside
    it so every panel keeps the full width; the others fill `cols` columns row by row, in order
    (the order `make_subplots` gives subplot titles in)."""
    if not specs:
        return Grid(0, cols, {})
    cells = {specs[0].key: (1, 1)}
    for i, spec in enumerate(specs[1:]):
        cells[spec.key] = (2 + i // cols, 1 + i % cols)
    rows = 1 + math.ceil((len(specs) - 1) / cols)
    return Grid(rows, cols, cells)
