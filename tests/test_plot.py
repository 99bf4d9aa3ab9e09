"""liteshift.health.plot: the stdlib-only PNG line chart, decoded back by a small PNG reader written here."""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import pytest

from liteshift.health import plot
from liteshift.health.plot import (
    PNG_SIGNATURE,
    Series,
    chart_frame,
    line_chart_png,
    nice_range,
    x_ticks,
    y_ticks,
)

DAY = 86400.0
T0 = 1_746_057_600.0  # 2025-05-01 00:00:00 UTC
BLUE = (31, 119, 180)
GREEN = (44, 160, 44)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Parse an 8-bit RGB PNG, checking every chunk's CRC; return width, height and the pixel rows."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert len(body) == length, f"{kind!r} chunk truncated"
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert chunks[-1][1] == b""
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    lines = [raw[i * stride : (i + 1) * stride] for i in range(height)]
    assert all(len(line) == stride and line[0] == 0 for line in lines)  # filter type 0 (None) on every row
    return width, height, [line[1:] for line in lines]


def pixel(rows: list[bytes], x: int, y: int) -> tuple[int, int, int]:
    """The RGB value at column x, row y."""
    r, g, b = rows[y][3 * x : 3 * x + 3]
    return (r, g, b)


def flat(y: float, days: int = 4, color: tuple[int, int, int] = BLUE) -> Series:
    """A constant series, one point a day."""
    return Series("flat", [(T0 + i * DAY, y) for i in range(days)], color)


def test_png_structure_and_size(tmp_path: Path) -> None:
    out = line_chart_png(tmp_path / "c.png", "Size trend", [flat(5.0)], width=400, height=200, y_label="MB")
    assert out == tmp_path / "c.png"
    width, height, rows = read_png(out)
    assert (width, height, len(rows)) == (400, 200, 200)
    assert all(len(row) == 3 * 400 for row in rows)
    assert pixel(rows, 0, 0) == (255, 255, 255)  # white background


def test_constant_series_is_drawn_on_its_mapped_row(tmp_path: Path) -> None:
    series = [flat(5.0)]
    fr = chart_frame(series)
    assert fr is not None and fr.y0 < 5.0 < fr.y1
    _, _, rows = read_png(line_chart_png(tmp_path / "c.png", "t", series))
    row, mid = fr.row(5.0), fr.col(T0 + 1.5 * DAY)
    assert pixel(rows, mid, row) == BLUE
    assert pixel(rows, mid, row + 1) == BLUE  # 2 px pen
    assert pixel(rows, mid, row - 10) != BLUE and pixel(rows, mid, row + 10) != BLUE


def test_threshold_row_is_dashed_red(tmp_path: Path) -> None:
    series = [flat(5.0)]
    fr = chart_frame(series, threshold=8.0)
    assert fr is not None and fr.y1 >= 8.0
    _, _, rows = read_png(line_chart_png(tmp_path / "c.png", "t", series, threshold=8.0))
    line = [pixel(rows, x, fr.row(8.0)) for x in range(fr.left + 1, fr.right)]
    red = sum(p == plot.RED for p in line)
    assert 0.3 * len(line) < red < 0.7 * len(line)  # dashed: about half the row


def test_far_threshold_is_not_drawn_nor_stretches_the_axis(tmp_path: Path) -> None:
    series = [flat(5.0)]
    fr = chart_frame(series, threshold=1e9)
    assert fr is not None and fr.y1 < 100
    _, _, rows = read_png(line_chart_png(tmp_path / "c.png", "t", series, threshold=1e9))
    plot_rows = range(fr.top, fr.bottom + 1)
    assert not any(pixel(rows, x, y) == plot.RED for y in plot_rows for x in range(fr.left, fr.right, 3))


@pytest.mark.parametrize(
    "series",
    [[], [Series("none", [], BLUE)], [Series("gaps", [(T0, None), (T0 + DAY, math.nan)], BLUE)]],  # type: ignore[list-item]
    ids=["no-series", "no-points", "only-missing"],
)
def test_empty_input_gives_a_valid_png_saying_no_data(tmp_path: Path, series: list[Series]) -> None:
    assert chart_frame(series, threshold=3.0) is None
    width, height, rows = read_png(line_chart_png(tmp_path / "e.png", "Empty", series, threshold=3.0))
    assert (width, height) == (720, 300)
    middle = [pixel(rows, x, y) for y in range(130, 170) for x in range(300, 440)]
    assert any(p == plot.INK for p in middle)  # the "no data" text


def test_one_point_gets_a_marker(tmp_path: Path) -> None:
    series = [Series("one", [(T0, 42.0)], GREEN)]
    fr = chart_frame(series)
    assert fr is not None and fr.x0 < T0 < fr.x1 and fr.y0 < 42.0 < fr.y1
    _, _, rows = read_png(line_chart_png(tmp_path / "one.png", "one", series))
    assert pixel(rows, fr.col(T0), fr.row(42.0)) == GREEN


def test_missing_values_are_skipped_and_break_the_line(tmp_path: Path) -> None:
    pts = [(T0, 1.0), (T0 + DAY, None), (T0 + 2 * DAY, math.nan), (T0 + 3 * DAY, 1.0), (T0 + 4 * DAY, 1.0)]
    series = [Series("gappy", pts, BLUE)]  # type: ignore[arg-type]
    fr = chart_frame(series)
    assert fr is not None
    _, _, rows = read_png(line_chart_png(tmp_path / "g.png", "g", series))
    row = fr.row(1.0)
    assert pixel(rows, fr.col(T0), row) == BLUE
    assert pixel(rows, fr.col(T0 + 1.5 * DAY), row) != BLUE  # the gap
    assert pixel(rows, fr.col(T0 + 3.5 * DAY), row) == BLUE


def test_points_outside_x_range_are_clipped(tmp_path: Path) -> None:
    pts = [(T0 - 30 * DAY, 1e15), (T0, 1.0), (T0 + DAY, 2.0), (T0 + 2 * DAY, -1e15)]
    series = [Series("spiky", pts, BLUE)]
    fr = chart_frame(series, x_range=(T0 - DAY / 2, T0 + 1.5 * DAY))
    assert fr is not None and fr.y0 <= 1.0 and 2.0 <= fr.y1 < 10  # only the points in range set the y axis
    _, _, rows = read_png(line_chart_png(tmp_path / "x.png", "x", series, x_range=(fr.x0, fr.x1)))
    assert pixel(rows, fr.col(T0 + DAY / 2), fr.row(1.5)) == BLUE
    with pytest.raises(ValueError):
        line_chart_png(tmp_path / "bad.png", "x", series, x_range=(T0, T0))


def test_atomic_write_leaves_only_the_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "charts" / "db.png"
    line_chart_png(target, "first", [flat(1.0)])
    line_chart_png(target, "second", [flat(2.0)])  # replaces the first in place
    assert sorted(os.listdir(target.parent)) == ["db.png"]
    before = target.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(plot.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        line_chart_png(target, "third", [flat(3.0)])
    assert sorted(os.listdir(target.parent)) == ["db.png"]
    assert target.read_bytes() == before


def test_nice_ranges_and_tick_labels() -> None:
    for lo, hi in [(0, 1), (3, 97), (0, 7), (-2.5, 0.1), (1_234, 9_876_543), (5, 5), (0, 0), (1e9, 3.2e9)]:
        y0, y1, step = nice_range(lo, hi)
        ticks = y_ticks(y0, y1, step)
        assert y0 <= lo and hi <= y1 and 3 <= len(ticks) <= 5, (lo, hi, ticks)
        assert len({label for _, label in ticks}) == len(ticks)
    assert [label for _, label in y_ticks(*nice_range(0, 2_000_000))] == [
        "0.0M",
        "0.5M",
        "1.0M",
        "1.5M",
        "2.0M",
    ]
    assert [label for _, label in y_ticks(*nice_range(0, 7))] == ["0", "2", "4", "6", "8"]
    assert y_ticks(*nice_range(0, 4_000))[-1][1] == "4K"
    assert y_ticks(*nice_range(0, 3e9))[-1][1] == "3G"


def test_date_ticks_are_utc_mm_dd() -> None:
    ticks = x_ticks(T0 - DAY / 2, T0 + 2.5 * DAY, 10)
    assert ticks == [(T0, "05-01"), (T0 + DAY, "05-02"), (T0 + 2 * DAY, "05-03")]
    assert len(x_ticks(T0, T0 + 365 * DAY, 8)) <= 8
    assert [label for _, label in x_ticks(T0 + 3600, T0 + 7200, 8)] == ["05-01"]  # no midnight in range


def test_font_covers_the_promised_characters() -> None:
    wanted = "0123456789 .,:-%/()_+ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    assert set(wanted) <= set(plot.FONT)
    assert all(len(rows) == 7 and max(rows) < 32 for rows in plot.FONT.values())


def test_pillow_decodes_the_same_pixels(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    series = [flat(5.0), Series("up", [(T0 + i * DAY, float(i)) for i in range(4)], GREEN)]
    path = line_chart_png(tmp_path / "p.png", "Pillow check", series, threshold=4.5, y_label="count")
    width, height, rows = read_png(path)
    with image_module.open(path) as img:
        assert (img.size, img.mode) == ((width, height), "RGB")
        assert img.tobytes() == b"".join(rows)
