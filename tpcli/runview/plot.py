"""`tp runs plot`: a metric's curve of each run against the step, smoothed as TensorBoard does,
drawn in the terminal (braille dots, a colour per run; plain marker characters when piped) or by
matplotlib into a PNG.

Smoothing is TensorBoard's scalar smoothing: an exponential moving average debiased like Adam's
moments (`smoothed_n = ema_n / (1 - w**n)`), so the curve starts at the first value instead of
climbing from zero; non-finite values pass through unsmoothed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpcli.errors import TpError

Curve = list[tuple[int, float]]  # (step, value), by step
COLORS = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white")
MARKERS = "*o+x#@%&"
# braille dot bits by (column, row) inside a 2 x 4 cell
DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing of a scalar series: the EMA `e_n = w e_{n-1} + (1 - w) x_n`
    (e_0 = 0), debiased as `e_n / (1 - w**n)`, with n counting the finite values so far.
    weight 0 returns the values as they are."""
    if not 0 <= weight < 1:
        raise TpError(f"--smooth {weight} is outside [0, 1)",
                      hint="0 draws the raw values; 0.6 is TensorBoard's default; 0.99 is smooth")
    out: list[float] = []
    ema, n = 0.0, 0
    for x in values:
        if not math.isfinite(x):
            out.append(x)
            continue
        ema = weight * ema + (1 - weight) * x
        n += 1
        out.append(ema / (1 - weight ** n))
    return out


@dataclass
class Canvas:
    """A grid of cells, each holding dots (braille: 2 x 4 per cell; markers: 1 x 1) and the run
    that drew there last."""

    cols: int
    rows: int
    braille: bool

    def __post_init__(self) -> None:
        self.sx, self.sy = (2, 4) if self.braille else (1, 1)
        self.bits = [[0] * self.cols for _ in range(self.rows)]
        self.owner: list[list[int | None]] = [[None] * self.cols for _ in range(self.rows)]

    def dot(self, x: int, y: int, run: int) -> None:
        """Light the dot at (x, y) of the dot grid (y = 0 at the top)."""
        c, r = x // self.sx, y // self.sy
        if 0 <= c < self.cols and 0 <= r < self.rows:
            self.bits[r][c] |= DOTS[x % 2][y % 4] if self.braille else 1
            self.owner[r][c] = run

    def line(self, a: tuple[int, int], b: tuple[int, int], run: int) -> None:
        """Bresenham's line from a to b."""
        (x0, y0), (x1, y1) = a, b
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, run)
            if (x0, y0) == (x1, y1):
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def cell(self, r: int, c: int) -> tuple[str, int | None]:
        run = self.owner[r][c]
        if not self.bits[r][c] or run is None:
            return " ", None
        return (chr(0x2800 + self.bits[r][c]) if self.braille else MARKERS[run % len(MARKERS)],
                run)


def _tick(v: float) -> str:
    return f"{v:.4g}"


def _bounds(curves: list[Curve]) -> tuple[float, float, float, float]:
    xs = [s for c in curves for s, _ in c]
    ys = [v for c in curves for _, v in c if math.isfinite(v)]
    if not ys:
        raise TpError("the runs logged no finite value of this metric", hint="plot another "
                      "metric (--metric)")
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y0 == y1:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    return x0, max(x1, x0 + 1), y0, y1


Segment = tuple[str, "str | None"]  # text and its rich style (None: unstyled)


def terminal_plot(named: list[tuple[str, Curve]], metric: str, weight: float, width: int,
                  height: int = 14, braille: bool = True) -> list[list[Segment]]:
    """The lines of a character plot `width` columns wide: a title, `height` rows of curves with
    the y axis on the left, the x axis, its step labels, then one legend line per run. Each
    line is a list of (text, style) segments; styles colour the runs on a terminal."""
    curves = [smooth_curve(c, weight) for _, c in named]
    x0, x1, y0, y1 = _bounds(curves)
    labels = [_tick(y1), _tick((y0 + y1) / 2), _tick(y0)]
    lw = max(len(s) for s in labels)
    cols = width - lw - 2
    if cols < 10:
        raise TpError(f"the terminal is {width} columns wide, too narrow to plot",
                      hint="widen it, or write a PNG with --out curves.png")
    canvas = Canvas(cols, height, braille)
    px, py = cols * canvas.sx - 1, height * canvas.sy - 1
    for i, curve in enumerate(curves):
        pts = [(round((s - x0) / (x1 - x0) * px), round((y1 - v) / (y1 - y0) * py))
               for s, v in curve if math.isfinite(v)]
        for a, b in zip(pts, pts[1:] or pts):
            canvas.line(a, b, i)
    how = f"smoothing {weight} (TensorBoard's debiased EMA)" if weight else "not smoothed"
    lines: list[list[Segment]] = [[(f"{metric} vs step, {how}"[:width].ljust(width), "bold")]]
    for r in range(height):
        label = labels[0] if r == 0 else labels[2] if r == height - 1 else (
            labels[1] if r == (height - 1) // 2 else "")
        row: list[Segment] = [(f"{label.rjust(lw)} {'┤' if label else '│'}", "dim")]
        for c in range(cols):
            ch, run = canvas.cell(r, c)
            row.append((ch, None if run is None else COLORS[run % len(COLORS)]))
        lines.append(row)
    lines.append([(" " * (lw + 1) + "└" + "─" * cols, "dim")])
    left, right, mid = str(x0), str(x1), "step"
    gap = cols - len(left) - len(right)
    axis = left + mid.center(max(gap, len(mid))) + right if gap > len(mid) + 1 else (
        left + right.rjust(cols - len(left)))
    lines.append([(" " * (lw + 2) + axis[:cols].ljust(cols), "dim")])
    for i, (name, raw) in enumerate(named):
        mark = "⣿" if braille else MARKERS[i % len(MARKERS)]
        lines.append([(f"  {mark} ", COLORS[i % len(COLORS)]),
                      (f"{name}  (last {_tick(raw[-1][1])} at step {raw[-1][0]})", None)])
    return lines


def smooth_curve(curve: Curve, weight: float) -> Curve:
    return list(zip([s for s, _ in curve], smooth([v for _, v in curve], weight)))


def save_png(named: list[tuple[str, Curve]], metric: str, weight: float, out: Path,
             size: tuple[int, int]) -> Path:
    """The curves by matplotlib (Agg) into a PNG of exactly `size` pixels (width, height): each
    run's raw values faint and its smoothed curve over them; written atomically."""
    try:
        import matplotlib
    except ImportError as e:
        raise TpError("writing a PNG needs matplotlib, which is not installed",
                      hint="pip install matplotlib, or leave out --out to plot in the "
                      "terminal") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, h = size
    fig, ax = plt.subplots(figsize=(w / 100, h / 100), dpi=100)
    try:
        for i, (name, curve) in enumerate(named):
            steps, values = [s for s, _ in curve], [v for _, v in curve]
            color = f"C{i % 10}"
            if weight:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(steps, smooth(values, weight), color=color, linewidth=1.6, label=name)
        how = f"smoothing {weight} (TensorBoard's debiased EMA)" if weight else "not smoothed"
        ax.set(xlabel="step", ylabel=metric, title=f"{metric}, {how}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp, dpi=100, format="png")
            os.replace(tmp, out)
        except OSError as e:
            raise TpError(f"cannot write {out}: {e.strerror or e}",
                          hint="choose an --out in a folder you can write to") from e
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return out


def pick(runs: list[tuple[str, dict[str, Curve]]], metric: str) -> list[tuple[str, Curve]]:
    """(name, curve) of `metric` for each run; a run with no metrics yet, or a metric none of
    the runs logged, is a TpError (the latter lists the metrics they have)."""
    for name, series in runs:
        if not series:
            raise TpError(f"run {name} has no metrics yet (its metrics.jsonl is missing or "
                          "empty: it has not logged a step)",
                          hint="wait for its first log step, or leave it out")
    have = [(name, series[metric]) for name, series in runs if series.get(metric)]
    if not have:
        names = sorted({k for _, s in runs for k in s})
        raise TpError(f"no run logged the metric {metric!r}; they have: {', '.join(names)}",
                      hint="choose one with --metric NAME")
    return have


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if not (100 <= w <= 10000 and 100 <= h <= 10000):
        raise TpError(f"--size {text!r} is not WIDTHxHEIGHT in pixels (100 to 10000 each)",
                      hint="e.g. --size 1000x600")
    return w, h


def render(lines: list[list[Segment]], color: bool) -> Any:
    """The plot's lines as rich Text (colour) or plain strings."""
    if not color:
        return ["".join(text for text, _ in line) for line in lines]
    from rich.text import Text

    out = []
    for line in lines:
        t = Text()
        for text, style in line:
            t.append(text, style=style or "")
        out.append(t)
    return out
