"""Exports for papers and slides: figures as high-resolution PNG and SVG, data as
CSV/JSON, optimisations as PNG strips and animated GIFs. Every file names the
inputs that produced it (PNG text chunk, SVG metadata, a JSON field)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.data.images import to_uint8
from core.models.probe import short_names
from core.jobs.results import plain

KEY = "robustlens:inputs"


def to_json(value: Any, inputs: dict) -> str:
    """A result and the inputs that made it, as JSON text."""
    return json.dumps({"inputs": plain(inputs), "result": plain(value)}, indent=1,
                      allow_nan=False)


def _save(fig, fmt: str, inputs: dict, dpi: int = 300) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    meta = json.dumps(plain(inputs))
    metadata = {"Description": meta} if fmt in ("png", "svg") else None
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    data = buf.getvalue()
    if fmt == "png":  # also under our own key, which PNG readers list as text
        im = Image.open(io.BytesIO(data))
        info = PngInfo()
        info.add_text(KEY, meta)
        info.add_text("Description", meta)
        out = io.BytesIO()
        im.save(out, format="PNG", pnginfo=info)
        data = out.getvalue()
    return data


def _caption(fig, caption: str) -> None:
    """The caption under everything drawn: tick labels and axis titles reach below the
    axes by an amount known only once the figure is laid out."""
    if not caption:
        return
    fig.canvas.draw()
    bottom = fig.get_tightbbox(fig.canvas.get_renderer()).y0 / fig.get_figheight()
    fig.text(0.01, bottom - 0.02, caption, fontsize=6, ha="left", va="top", wrap=True)


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
            inputs: dict, fmt: str = "png", row_title: str = "", col_title: str = "",
            annotate: bool | str = False, vmin: float = 0.0, vmax: float = 1.0,
            cmap: str = "viridis", caption: str = "") -> bytes:
    """A labelled heatmap as PNG (300 dpi) or SVG; origin bottom-left unless annotate
    (True: each value written as a percentage; a format string: in that format)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = np.asarray(matrix, dtype=float)
    size = (max(4.0, 0.32 * len(cols) + 2), max(3.0, 0.32 * len(rows) + 1.5))
    fig, ax = plt.subplots(figsize=size)
    im = ax.imshow(m, origin="upper" if annotate else "lower", vmin=vmin, vmax=vmax, cmap=cmap,
                   aspect="auto" if annotate else "equal")
    step_r, step_c = max(1, len(rows) // 24), max(1, len(cols) // 24)
    ax.set_yticks(range(0, len(rows), step_r), short_names(rows)[::step_r])
    ax.set_xticks(range(0, len(cols), step_c), short_names(cols)[::step_c], rotation=60,
                  ha="right")
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if annotate:
        number = annotate if isinstance(annotate, str) else ".0%"
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, format(m[i, j], number), ha="center", va="center", fontsize=7,
                            color="black")
    _caption(fig, caption)
    return _save(fig, fmt, inputs)


def panels(items: Sequence[dict], inputs: dict, fmt: str = "png", caption: str = "") -> bytes:
    """Several CKA matrices side by side (the paper view): {matrix, rows, cols, title,
    row_title, col_title} each, one colour scale 0..1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # constrained: each panel's row title keeps clear of its left neighbour
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4.4), layout="constrained")
    for ax, it in zip(np.atleast_1d(axes), items):
        im = ax.imshow(np.asarray(it["matrix"], float), origin="lower", vmin=0, vmax=1,
                       cmap="viridis")
        rows, cols = it["rows"], it["cols"]
        sr, sc = max(1, len(rows) // 12), max(1, len(cols) // 12)
        ax.set_yticks(range(0, len(rows), sr), short_names(rows)[::sr], fontsize=6)
        ax.set_xticks(range(0, len(cols), sc), short_names(cols)[::sc], fontsize=6,
                      rotation=60, ha="right")
        ax.set_title(it["title"], fontsize=9)
        ax.set_xlabel(it.get("col_title", ""), fontsize=8)
        ax.set_ylabel(it.get("row_title", ""), fontsize=8)
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), fraction=0.02, pad=0.02, label="CKA")
    _caption(fig, caption)
    return _save(fig, fmt, inputs)


def csv_with_inputs(csv_text: str, inputs: dict) -> str:
    """CSV whose first line is a comment naming the inputs."""
    return f"# {KEY} {json.dumps(plain(inputs))}\n{csv_text}"


def image_strip(images: Sequence[Any], inputs: dict, scale: int = 4,
                labels: Sequence[str] | None = None) -> bytes:
    """Images side by side (nearest-neighbour enlarged to the largest one's size, at
    most 512 px a tile) as one PNG."""
    tiles = [to_uint8(im) for im in images]
    side = max(max(t.shape[:2]) for t in tiles)
    tiles = [t if t.shape[:2] == (side, side) else np.asarray(
        Image.fromarray(t).resize((side, side), Image.Resampling.NEAREST)) for t in tiles]
    scale = max(1, min(scale, 512 // side))
    h, w = side, side
    gap = 2
    strip = np.full((h * scale, len(tiles) * (w * scale + gap) - gap, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        big = t.repeat(scale, 0).repeat(scale, 1)
        x0 = k * (w * scale + gap)
        strip[:, x0:x0 + w * scale] = big[:, :, :3] if big.ndim == 3 else big[:, :, None]
    info = PngInfo()
    info.add_text(KEY, json.dumps(plain({**inputs, "labels": list(labels or [])})))
    out = io.BytesIO()
    Image.fromarray(strip).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def strip_file(folder: str | Path, name: str, images: Sequence[Any], inputs: dict,
               scale: int = 8) -> str:
    """An image strip written as FOLDER/NAME.png (the folder made if need be); its path."""
    path = Path(folder) / f"{name.replace(' ', '_')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_strip(images, inputs, scale))
    return str(path)


def gif(frames: Sequence[Any], inputs: dict, scale: int = 6, ms: int = 200) -> bytes:
    """An animated GIF of optimisation frames (the last one held longer), at most
    512 px a side."""
    scale = max(1, min(scale, 512 // max(to_uint8(frames[0]).shape[:2])))
    pics = [Image.fromarray(to_uint8(f).repeat(scale, 0).repeat(scale, 1)) for f in frames]
    out = io.BytesIO()
    durations = [ms] * (len(pics) - 1) + [ms * 5]
    pics[0].save(out, format="GIF", save_all=True, append_images=pics[1:], duration=durations,
                 loop=0, comment=json.dumps(plain(inputs)).encode()[:60000])
    return out.getvalue()


def png_inputs(blob: bytes) -> dict:
    """The inputs a PNG export carries (for checks and provenance)."""
    im = Image.open(io.BytesIO(blob))
    return json.loads(im.text[KEY])
