"""Views: a page and its settings as one plain dict, the same one the URL holds.

The pages read their settings from a view, talk decks list views, and
`python -m core precompute DECK` computes every job a view needs, so a
bookmarked link or a deck slide opens with nothing left to compute.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import data, images, jobs
from .jobs import Job, Loader

# url path -> page script, in menu order
PAGES = {"": "pages/home.py", "cka": "pages/cka.py",
         "stitching": "pages/stitching.py",
         "inversion": "pages/inversion.py",
         "manipulation": "pages/manipulation.py"}
PAPERS = {
    "cka": "Cianfarani et al., Understanding Robust Learning through the Lens of "
                    "Representation Similarities, NeurIPS 2022",
    "stitching": "Balogh & Jelasity, On the Functional Similarity of Robust and "
                        "Non-Robust Neural Representations, ICML 2023",
    "inversion": "Engstrom et al., Adversarial Robustness as a Prior for "
                                "Learned Representations, 2019",
    "manipulation": "Engstrom et al., Adversarial Robustness as a Prior for Learned "
                            "Representations, 2019",
}
# every setting a page keeps in the URL, with its default
DEFAULTS: dict[str, dict[str, Any]] = {
    "cka": {"cka_view": "Explore", "cka_pair": "A vs B", "cka_in_a": "benign",
                     "cka_in_b": "benign", "cka_against": "self", "cka_layers": "blocks",
                     "cka_n": 10_000, "cka_kernel": "linear", "cka_cell": [0, 0]},
    "stitching": {"st_r": "resnet18-linf-8", "st_s": "resnet18-standard-s0",
                         "st_s2": "resnet18-standard-s1", "st_r2": "resnet18-l2-1.0",
                         "st_method": "task", "st_metric": "robust", "st_cell": [0, 0]},
    "inversion": {"inv_source": "samples", "inv_img": "foolbox-00",
                                 "inv_layer": "avgpool", "inv_method": "adam",
                                 "inv_steps": 150, "inv_seed": 0},
    "manipulation": {"mf_tab": "Feature browser", "mf_feat": "", "mf_add_img": "foolbox-00",
                             "mf_add_index": 0, "mf_ia": "foolbox-00", "mf_ib": "foolbox-03",
                             "mf_mis": ""},
}
COMMON = {"a": "resnet18-l2-1.0", "b": "resnet18-standard-s0", "present": False}


def settings(page: str, params: dict) -> dict:
    """The full settings of a view: its parameters over the page's defaults."""
    if page not in PAGES:
        raise ValueError(f"unknown page {page!r}; pages: {', '.join(p or '(home)' for p in PAGES)}")
    out = {**COMMON, **DEFAULTS.get(page, {})}
    unknown = set(params) - set(out)
    if unknown:
        raise ValueError(f"page {page or 'home'} has no setting {', '.join(sorted(unknown))}")
    return {**out, **params}


# ------------------------------------------------------------------- images

def image_for(key: str) -> tuple[np.ndarray, str, int | None] | None:
    """An image by its gallery key: (uint8 HWC, title, label) or None."""
    if key.startswith("foolbox-") or key.startswith("photo-"):
        pool = data.cifar_samples() if key.startswith("foolbox-") else data.ood_photos()
        s = next((s for s in pool if s.key == key), None)
        return (s.image, s.title, s.label) if s else None
    if key.startswith("test-"):
        try:
            test = data.cifar10("test")
            i = int(key.split("-", 1)[1])
        except (data.DataNotFoundError, ValueError):
            return None
        if 0 <= i < len(test):
            label = int(test.labels[i])
            return (test.images[i].numpy().transpose(1, 2, 0),
                    f"test image {i}: {data.CLASSES[label]}", label)
    upload = images.saved_upload(key)
    return None if upload is None else (upload, "your upload", None)


# --------------------------------------------------------------------- jobs

def cka_jobs(load: Loader, s: dict) -> list[Job]:
    if s["cka_view"] == "Paper view":
        pairs = [(s["b"], s["b"]), (s["a"], s["a"]), (s["b"], s["a"])]
        return [jobs.cka_job(load, x, y, s["cka_layers"], s["cka_layers"], s["cka_in_a"],
                             s["cka_in_a"], "self", s["cka_kernel"], int(s["cka_n"]))
                for x, y in pairs]
    first, second = s["cka_pair"].split(" vs ")
    spec = {"A": s["a"], "B": s["b"]}
    return [jobs.cka_job(load, spec[first], spec[second], s["cka_layers"], s["cka_layers"],
                         s["cka_in_a"], s["cka_in_b"], s["cka_against"], s["cka_kernel"],
                         int(s["cka_n"]))]


def stitch_pairs(s: dict) -> list[tuple[str, str]]:
    r1, s1, s2, r2 = s["st_r"], s["st_s"], s["st_s2"], s["st_r2"]
    return [(r1, s1), (s1, r1), (s1, s2), (r1, r2)]


def stitching_jobs(load: Loader, s: dict) -> list[Job]:
    return jobs.stitch_matrix(load, stitch_pairs(s), s["st_method"]).jobs()


def inversion_jobs(load: Loader, s: dict) -> list[Job]:
    found = image_for(s["inv_img"])
    out = [jobs.quality_job(load, m) for m in (s["a"], s["b"])]
    if found is None:
        return out
    return [jobs.inversion_job(load, m, found[0], s["inv_layer"], s["inv_method"],
                               int(s["inv_steps"]), "noise", int(s["inv_seed"]))
            for m in (s["a"], s["b"])] + out


def manipulation_jobs(load: Loader, s: dict) -> list[Job]:
    probe = load(s["a"])
    feats = jobs.browser_features(probe)
    out = [jobs.feature_grid_job(load, s["a"], feats)]
    feat = int(s["mf_feat"][1:]) if s["mf_feat"].startswith("f") else feats[0]
    out += [jobs.feature_grid_job(load, m, [feat]) for m in (s["a"], s["b"])]
    if data.has_cifar10("test"):
        out += [jobs.test_outputs_job(load, s["a"]), jobs.top_images_job(load, s["a"], feats)]
    add = image_for(s["mf_add_img"])
    if add is not None:
        out += [jobs.add_feature_job(load, m, add[0], int(s["mf_add_index"])) for m in (s["a"], s["b"])]
    ia, ib = image_for(s["mf_ia"]), image_for(s["mf_ib"])
    if ia is not None and ib is not None:
        out += [jobs.interpolation_job(load, m, ia[0], ib[0]) for m in (s["a"], s["b"])]
    mis = image_for(s["mf_mis"]) if s["mf_mis"] else None
    if mis is not None and mis[2] is not None:
        out.append(jobs.explain_job(load, s["a"], mis[0], mis[2]))
    return out


def view_jobs(load: Loader, page: str, params: dict) -> list[Job]:
    """Every cached computation the view (page, params) shows."""
    s = settings(page, params)
    builder = {"cka": cka_jobs, "stitching": stitching_jobs,
               "inversion": inversion_jobs,
               "manipulation": manipulation_jobs}.get(page)
    return builder(load, s) if builder else []


# -------------------------------------------------------------------- decks

def load_deck(path: str | Path) -> dict:
    """A talk deck: YAML or JSON {title, views: [{page, title, note, params}]}."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        deck = yaml.safe_load(text)
    else:
        deck = json.loads(text)
    if not isinstance(deck, dict) or not isinstance(deck.get("views"), list) or not deck["views"]:
        raise ValueError(f"{path.name}: a deck is a mapping with a non-empty list 'views'")
    for i, v in enumerate(deck["views"]):
        if not isinstance(v, dict) or "page" not in v:
            raise ValueError(f"{path.name}: view {i + 1} needs a 'page'")
        settings(v["page"], v.get("params") or {})  # validates page and setting names
        v.setdefault("params", {})
        v.setdefault("title", v["page"])
    return deck


def query_params(view: dict) -> dict[str, str]:
    """A deck view as URL query parameters (the format pages read)."""
    out = {}
    for k, v in (view.get("params") or {}).items():
        if isinstance(v, bool):
            out[k] = "1" if v else "0"
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))
        else:
            out[k] = str(v)
    return out

