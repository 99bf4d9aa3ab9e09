"""Dependency-free PNG line charts for the health trends: an RGB buffer, a 5x7 font, zlib and struct."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom, all inclusive
INK: RGB = (40, 40, 40)
GRID: RGB = (228, 228, 228)
RED: RGB = (220, 30, 30)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "K"))
_DAY_STEPS = (1, 2, 7, 14, 28, 91, 182, 364)

# 5x7 bitmap font: per glyph, 7 rows of 5 bits (0x10 = leftmost column) written as 14 hex digits;
# the glyphs in _DESCENDERS are drawn 2 rows lower.
_GLYPHS = " 0123456789.,:-%/()_+?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FONT_HEX = """
00000000000000 0E11131519110E 040C040404040E 0E11010204081F 1F02040201110E 02060A121F0202 1F101E0101110E
0608101E11110E 1F010204080808 0E11110E11110E 0E11110F01020C 00000000000C0C 000000000C0408 000C0C000C0C00
0000001F000000 18190204081303 00010204081000 02040808080402 08040202020408 0000000000001F 0004041F040400
0E110102040004 0E11111F111111 1E11111E11111E 0E11101010110E 1C12111111121C 1F10101E10101F 1F10101E101010
0E11101711110F 1111111F111111 0E04040404040E 0702020202120C 11121418141211 1010101010101F 111B1515111111
11111915131111 0E11111111110E 1E11111E101010 0E11111115120D 1E11111E141211 0F10100E01011E 1F040404040404
1111111111110E 11111111110A04 1111111515150A 11110A040A1111 1111110A040404 1F01020408101F 00000E010F110F
1010161911111E 00000E1010110E 01010D1311110F 00000E111F100E 0609081C080808 0F1111110F010E 10101619111111
04000C0404040E 0200060202120C 10101214181412 0C04040404040E 00001A15151111 00001619111111 00000E1111110E
1E1111111E1010 0F1111110F0101 00001619101010 00000E100E011E 08081C08080906 0000111111130D 00001111110A04
0000111115150A 0000110A040A11 111111110F010E 00001F0204081F
"""
_DESCENDERS = "gpqy"
FONT: dict[str, bytes] = dict(zip(_GLYPHS, map(bytes.fromhex, _FONT_HEX.split()), strict=True))


@dataclass
class Series:
    """One line of the chart: (unix seconds, value) points in time order; None/NaN values are skipped."""

    label: str
    points: list[tuple[float, float]]
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Frame:
    """The plot area in pixels and the data ranges it shows; maps data coordinates to pixels."""

    left: int
    top: int
    right: int
    bottom: int
    x0: float
    x1: float
    y0: float
    y1: float
    y_step: float

    @property
    def box(self) -> Box:
        """The plot area as a clip box."""
        return (self.left, self.top, self.right, self.bottom)

    def col(self, x: float) -> int:
        """Pixel column of time x."""
        return round(self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left))

    def row(self, y: float) -> int:
        """Pixel row of value y."""
        return round(self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top))


class Canvas:
    """An RGB pixel buffer (white) with just the drawing primitives a chart needs."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.buf = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x: int, y: int, w: int, h: int, color: RGB, clip: Box | None = None) -> None:
        """Fill a w x h rectangle with top-left (x, y), clipped to `clip` and to the canvas."""
        left, top, right, bottom = clip or (0, 0, self.width - 1, self.height - 1)
        x0, x1 = max(x, left, 0), min(x + w - 1, right, self.width - 1)
        for yy in range(max(y, top, 0), min(y + h - 1, bottom, self.height - 1) + 1):
            if x0 <= x1:
                i = (yy * self.width + x0) * 3
                self.buf[i : i + 3 * (x1 - x0 + 1)] = bytes(color) * (x1 - x0 + 1)

    def line(self, a: tuple[int, int], b: tuple[int, int], color: RGB, clip: Box | None = None,
             thick: int = 2, dash: int = 0) -> None:  # fmt: skip
        """Bresenham line drawn with a thick x thick pen; dash > 0 alternates dash-long on/off runs."""
        (x, y), (x1, y1) = a, b
        dx, dy, sx, sy = abs(x1 - x), -abs(y1 - y), (1 if x < x1 else -1), (1 if y < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.rect(x, y, thick, thick, color, clip)
            if (x, y) == (x1, y1):
                return
            e2, n = 2 * err, n + 1
            if e2 >= dy:
                err, x = err + dy, x + sx
            if e2 <= dx:
                err, y = err + dx, y + sy

    def text(self, x: int, y: int, s: str, color: RGB, scale: int = 1) -> int:
        """Draw s with its top-left at (x, y); return the x just after it."""
        for ch in s:
            top = y + (2 * scale if ch in _DESCENDERS else 0)
            for r, bits in enumerate(FONT.get(ch, FONT["?"])):
                for c in range(5):
                    if bits & (0x10 >> c):
                        self.rect(x + c * scale, top + r * scale, scale, scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        """Encode as an 8-bit RGB PNG: every scanline with filter type 0, one zlib IDAT chunk."""
        stride = self.width * 3
        raw = b"".join(b"\x00" + self.buf[y * stride : (y + 1) * stride] for y in range(self.height))
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND")
        return PNG_SIGNATURE + body


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    """One PNG chunk: length, type, data, CRC32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _finite(v: object) -> bool:
    """True for a real, finite number (not None, NaN or inf)."""
    return isinstance(v, int | float) and math.isfinite(v)


def nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """Widen [lo, hi] to multiples of a 1/2/2.5/5 x 10^k step giving 3-5 ticks: (start, stop, step)."""
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    base = 10.0 ** math.floor(math.log10((hi - lo) / 4))
    while True:
        for step in (base, base * 2, base * 2.5, base * 5):
            a, b = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            if b - a <= 4:
                return a * step, b * step, step
        base *= 10


def y_ticks(y0: float, y1: float, step: float) -> list[tuple[float, str]]:
    """Tick values and labels: one K/M/G suffix for all, and just enough decimals for the step."""
    div, suffix = _scale(max(abs(y0), abs(y1)))
    unit, ks = step / div, range(round(y0 / step), round(y1 / step) + 1)
    dec = next((d for d in range(7) if abs(round(unit, d) - unit) <= 1e-9 * unit), 6)
    return [(k * step, f"{k * step / div:.{dec}f}{suffix}") for k in ks]


def x_ticks(x0: float, x1: float, max_labels: int) -> list[tuple[float, str]]:
    """Date ticks at UTC midnights labelled MM-DD, at most max_labels (one mid tick if none fall in range)."""
    days, max_labels = (x1 - x0) / 86400, max(max_labels, 2)
    step = next((d for d in _DAY_STEPS if days / d < max_labels), math.ceil(days / max_labels))
    first = math.ceil(x0 / 86400 / step) * step
    ticks = [d * 86400.0 for d in range(first, math.floor(x1 / 86400) + 1, step)] or [(x0 + x1) / 2]
    return [(t, datetime.fromtimestamp(t, UTC).strftime("%m-%d")) for t in ticks]


def _scale(v: float) -> tuple[float, str]:
    """The K/M/G divisor and suffix for numbers of magnitude |v|."""
    return next(((d, s) for d, s in _SUFFIXES if abs(v) >= d), (1.0, ""))


def _clip(a: tuple[int, int], b: tuple[int, int], box: Box) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Liang-Barsky: the part of segment a-b inside box, or None when it misses the box."""
    (x, y), dx, dy, t0, t1 = a, b[0] - a[0], b[1] - a[1], 0.0, 1.0
    for p, q in ((-dx, x - box[0]), (dx, box[2] - x), (-dy, y - box[1]), (dy, box[3] - y)):
        if p == 0 and q < 0:
            return None
        if p != 0:
            t0, t1 = (max(t0, q / p), t1) if p < 0 else (t0, min(t1, q / p))
    ends = (round(x + t0 * dx), round(y + t0 * dy)), (round(x + t1 * dx), round(y + t1 * dy))
    return ends if t0 <= t1 else None


def chart_frame(series: list[Series], *, width: int = 720, height: int = 300, threshold: float | None = None,
                x_range: tuple[float, float] | None = None) -> Frame | None:  # fmt: skip
    """The geometry line_chart_png uses for these arguments, or None when there is no point to plot."""
    if x_range is not None and not x_range[0] < x_range[1]:
        raise ValueError(f"x_range must be increasing, got {x_range}")
    pts = [(x, y) for s in series for x, y in s.points if _finite(x) and _finite(y)]
    pts = [p for p in pts if x_range is None or x_range[0] <= p[0] <= x_range[1]]
    if not pts:
        return None
    x0, x1 = x_range or (min(p[0] for p in pts), max(p[0] for p in pts))
    if x1 <= x0:
        x0, x1 = x0 - 43200, x1 + 43200
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    span = max(hi - lo, abs(lo), abs(hi), 1e-9)  # "near": within one data span or magnitude
    if threshold is not None and _finite(threshold) and lo - span <= threshold <= hi + span:
        lo, hi = min(lo, threshold), max(hi, threshold)
    pad = 0.04 * (hi - lo)  # keep lines off the axes, but do not push non-negative data below zero
    y0, y1, step = nice_range(lo - pad if lo < 0 or lo - pad >= 0 else 0.0, hi + pad)
    label_w = max(len(label) for _, label in y_ticks(y0, y1, step)) * 6
    return Frame(max(40, label_w + 12), 38, width - 16, height - 34, x0, x1, y0, y1, step)


def _draw_chart(cv: Canvas, fr: Frame, series: list[Series], threshold: float | None) -> None:
    """Grid, tick labels, axes, threshold, series lines and markers, legend."""
    for v, label in y_ticks(fr.y0, fr.y1, fr.y_step):
        cv.line((fr.left, fr.row(v)), (fr.right, fr.row(v)), GRID, thick=1)
        cv.text(fr.left - 5 - 6 * len(label), fr.row(v) - 3, label, INK)
    for t, label in x_ticks(fr.x0, fr.x1, (fr.right - fr.left) // 60):
        cv.line((fr.col(t), fr.top), (fr.col(t), fr.bottom), GRID, thick=1)
        cv.text(fr.col(t) - 14, fr.bottom + 6, label, INK)
    cv.line((fr.left, fr.top), (fr.left, fr.bottom), INK, thick=1)
    cv.line((fr.left, fr.bottom), (fr.right, fr.bottom), INK, thick=1)
    t_row = fr.row(threshold) if threshold is not None and fr.y0 <= threshold <= fr.y1 else None
    if t_row is not None:
        cv.line((fr.left, t_row), (fr.right, t_row), RED, fr.box, dash=6)
    area = (fr.left - 2, fr.top - 2, fr.right + 2, fr.bottom + 2)  # room for pens and markers at the edges
    for s in series:
        pts = [(fr.col(x), fr.row(y)) if _finite(x) and _finite(y) else None for x, y in s.points]
        for a, b in itertools.pairwise(pts):
            if a and b and (seg := _clip(a, b, area)):
                cv.line(*seg, s.color, area)
        valid = [p for p in pts if p]
        for x, y in valid if len(valid) <= (fr.right - fr.left) // 6 else []:
            cv.rect(x - 1, y - 1, 4, 4, s.color, area)
    entries = [(s.label, s.color, 0) for s in series]
    if threshold is not None:
        div, suffix = _scale(threshold)
        note = "" if t_row is not None else " (off scale)"
        entries.append((f"threshold {threshold / div:.4g}{suffix}{note}", RED, 4))
    x = fr.left
    for label, color, dash in entries:
        cv.line((x, cv.height - 10), (x + 12, cv.height - 10), color, dash=dash)
        x = cv.text(x + 18, cv.height - 13, label, color) + 14


def line_chart_png(path: Path, title: str, series: list[Series], *, width: int = 720, height: int = 300,
                   y_label: str = "", threshold: float | None = None,
                   x_range: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """Render series as a PNG line chart, write it atomically to path and return the path."""
    if width < 160 or height < 120:
        raise ValueError(f"chart too small: {width}x{height} (minimum 160x120)")
    threshold = threshold if _finite(threshold) else None
    cv = Canvas(width, height)
    cv.text(8, 6, title, INK, scale=2)
    cv.text(8, 26, y_label, INK)
    fr = chart_frame(series, width=width, height=height, threshold=threshold, x_range=x_range)
    if fr is None:
        cv.text((width + 24) // 2 - 42, height // 2 - 7, "no data", INK, scale=2)
    else:
        _draw_chart(cv, fr, series, threshold)
    _write_atomic(Path(path), cv.png())
    return Path(path)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write data to a temp file beside path, fsync it, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
