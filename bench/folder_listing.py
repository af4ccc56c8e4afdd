"""Listing an image folder the size of ImageNet's validation set, as every page click on
a folder does: RobustLens's ImageFolder (list, label and identify: one os.scandir pass,
plus each file's size and change time for the result key) against torchvision's
ImageFolder, which lists and labels only.

The folder is made of tiny JPEG files (1,000 classes x 50 by default; only the listing
is timed, never decoding). Median of --repeats runs, after one warm-up.

    python bench/folder_listing.py --out bench/results/folder-listing-cpu.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import data  # noqa: E402


def make_folder(root: Path, classes: int, per_class: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    for c in range(classes):
        d = root / f"class{c:04d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.JPEG").write_bytes(buf.getvalue())


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ROBUSTLENS_CACHE"] = str(Path(tmp) / "cache")   # its own hash memo
        root = Path(tmp) / "val"
        make_folder(root, args.classes, args.per_class)
        ours = median_seconds(lambda: data.ImageFolder(root, 224).identity(), args.repeats)
        listing = median_seconds(lambda: data.folder_files(root), args.repeats)
        theirs = median_seconds(lambda: torchvision.datasets.ImageFolder(str(root)),
                                args.repeats)
    result = {
        "images": args.classes * args.per_class,
        "robustlens_imagefolder_with_key_s": round(ours, 3),
        "robustlens_listing_only_s": round(listing, 3),
        "torchvision_imagefolder_s": round(theirs, 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torchvision": torchvision.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
