"""Exports are valid files that name the inputs that produced them."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image

from core import exports

INPUTS = {"a": {"name": "resnet18-l2-1.0", "fingerprint": "abc"}, "n": 1000, "layers": ["relu"]}
M = np.random.default_rng(0).random((5, 4))


def test_heatmap_png_is_an_image_that_names_its_inputs():
    blob = exports.heatmap(M, list("abcde"), list("wxyz"), "title", INPUTS, "png")
    im = Image.open(io.BytesIO(blob))
    assert im.format == "PNG" and im.size[0] > 600   # 300 dpi
    assert exports.png_inputs(blob) == INPUTS


def test_svg_is_xml_with_inputs_in_its_metadata():
    blob = exports.heatmap(M, list("abcde"), list("wxyz"), "t", INPUTS, "svg", annotate=True)
    root = ET.fromstring(blob)
    assert root.tag.endswith("svg")
    assert "resnet18-l2-1.0" in blob.decode()


def test_panels_strip_gif_csv_json():
    items = [{"matrix": M[:4, :4], "rows": list("abcd"), "cols": list("abcd"), "title": t}
             for t in ("std", "rob", "cross")]
    assert exports.png_inputs(exports.panels(items, INPUTS)) == INPUTS
    imgs = [torch.rand(3, 32, 32) for _ in range(3)]
    strip = Image.open(io.BytesIO(exports.image_strip(imgs, INPUTS, scale=2)))
    assert strip.size == (3 * 64 + 4, 64)
    g = Image.open(io.BytesIO(exports.gif(imgs, INPUTS, scale=2)))
    assert g.format == "GIF" and g.n_frames == 3
    assert json.loads(g.info["comment"].decode())["n"] == 1000
    csv = exports.csv_with_inputs("x,y\n1,2\n", INPUTS)
    assert csv.splitlines()[0].startswith("# robustlens:inputs {") and csv.endswith("1,2\n")
    js = json.loads(exports.to_json({"m": M, "t": torch.ones(2)}, INPUTS))
    assert js["inputs"] == INPUTS and js["result"]["t"] == [1.0, 1.0]


def test_image_strip_of_images_of_different_sizes():
    """An original at 224 px beside a 32 px model's reconstruction: one strip, each tile
    at the larger size (at most 512 px)."""
    png = exports.image_strip([np.zeros((224, 224, 3), np.uint8), np.ones((32, 32, 3), np.uint8)],
                              {"kind": "test"}, 8)
    assert Image.open(io.BytesIO(png)).size == (2 * 448 + 2, 448)


def test_a_caption_sits_under_the_axis_titles_and_tick_labels():
    # at a fixed place it covered the x-axis title and the long tick labels
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.imshow(np.zeros((11, 11)))
    ax.set_xticks(range(11), ["avgpool-with-a-long-name"] * 11, rotation=60, ha="right")
    ax.set_xlabel("standard (seed 0)")
    exports._caption(fig, "a caption long enough to wrap onto a second line " * 3)
    renderer = fig.canvas.get_renderer()
    caption = fig.texts[-1].get_window_extent(renderer)
    assert caption.y1 < ax.get_tightbbox(renderer).y0
    plt.close(fig)
