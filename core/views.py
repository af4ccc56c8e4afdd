"""Views: a page and its settings as one plain dict, the same one the URL holds.

Every setting of every page is declared once here (`SETTINGS`): its URL key,
default, options, the words a person reads and a help line. The pages build
their widgets from it, links and talk decks are checked against it, and
`python -m core precompute DECK` computes every job a view needs, so a
bookmarked link or a deck slide opens with nothing left to compute.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import data, jobs, zoo
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
# the short form a figure carries on a projector
CITES = {"cka": "Cianfarani et al., NeurIPS 2022", "stitching": "Balogh & Jelasity, ICML 2023",
         "inversion": "Engstrom et al., 2019", "manipulation": "Engstrom et al., 2019"}

DEFAULT_A = "resnet18-l2-1.0"      # the robust model with the clearest reconstructions
DEFAULT_B = "resnet18-standard-s0"
# the stitching matrix's rows when the person names no robust model
STITCH_ROBUST, STITCH_STANDARD = "resnet18-linf-8", "resnet18-standard-s0"
STITCH_STANDARD_2, STITCH_ROBUST_2 = "resnet18-standard-s1", "resnet18-l2-1.0"


@dataclass(frozen=True)
class Setting:
    """One setting of a page: its URL key, default, options and what a person reads.

    options None means a free value of the default's type (a model name, an image
    key, a number within `bounds`); `labels` maps an option to the words shown;
    server_path: a folder on the server, read only where the session may (core.access)."""
    key: str
    default: Any
    label: str
    options: tuple | None = None
    labels: Mapping[Any, str] = field(default_factory=dict)
    help: str = ""
    bounds: tuple[int, int] | None = None
    server_path: bool = False

    def show(self, value: Any) -> str:
        return self.labels.get(value, str(value))

    def parse(self, raw: Any) -> Any:
        """A URL or deck value -> a valid value of this setting; ValueError if it is not."""
        d = self.default
        if isinstance(raw, str):
            if isinstance(d, bool):
                if raw not in ("1", "0", "true", "false", "True", "False"):
                    raise ValueError(raw)
                value: Any = raw in ("1", "true", "True")
            elif isinstance(d, int) or (d is None and self.bounds):
                value = int(raw)
            elif isinstance(d, (list, tuple)):
                value = [int(x) for x in raw.split(",") if x != ""]
            else:
                value = raw
        else:
            value = list(raw) if isinstance(raw, tuple) else raw
        if self.options is not None and value not in self.options:
            raise ValueError(f"{self.key} must be one of {', '.join(map(str, self.options))}")
        if self.bounds is not None and value is not None and not (
                self.bounds[0] <= value <= self.bounds[1]):
            raise ValueError(f"{self.key} must lie in {self.bounds}")
        if isinstance(d, list) and (len(value) != len(d) or any(v < 0 for v in value)):
            raise ValueError(f"{self.key} must be {len(d)} non-negative integers")
        return value

    def format(self, value: Any) -> str:
        """A value as it stands in the URL."""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)


INPUTS = {"benign": "benign", "linf": "PGD Linf 8/255", "l2": "PGD L2 1.0"}

# settings every page shares (the sidebar's)
COMMON = (
    Setting("a", DEFAULT_A, "Model A", help="The model whose representations are studied; "
            "a robust one by default."),
    Setting("b", DEFAULT_B, "Model B", help="The model to compare with; a standard one by "
            "default."),
    Setting("present", False, "Presentation mode", help="Hides the sidebar and settings and "
            "enlarges figures for a projector. Esc, the exit button or ?present=0 leave it."),
)

FOLDER_HELP = ("Empty: CIFAR-10. Else a folder on this server of class folders of images "
               "(an ImageNet validation folder), read at the models' input size; for models "
               "of other data sets.")
SETTINGS: dict[str, tuple[Setting, ...]] = {
    "": (),
    "cka": (
        Setting("cka_view", "Explore", "View", ("Explore", "Paper view"),
                help="Explore: one pair of models, any layers and inputs. Paper view: the "
                     "three panels of Cianfarani et al.'s figure."),
        Setting("cka_pair", "A vs B", "Compare", ("A vs B", "A vs A", "B vs B", "B vs A"),
                help="A and B are the models chosen in the sidebar."),
        Setting("cka_in_a", "benign", "Inputs, first side", tuple(INPUTS), INPUTS,
                help="Benign test images, or PGD adversarial examples (Linf 8/255, step "
                     "2/255, or L2 1.0, step 0.1; 20 steps, random start)."),
        Setting("cka_in_b", "benign", "Inputs, second side", tuple(INPUTS), INPUTS),
        Setting("cka_against", "self", "Adversarial against", ("self", "a", "b"),
                {"self": "own model", "a": "first model", "b": "second model"},
                help="Whose gradients make the adversarial examples: each side's own model, "
                     "or one model's examples shown to both (transfer)."),
        Setting("cka_layers", "blocks", "Layers", ("blocks", "all"),
                {"blocks": "block outputs", "all": "every layer"},
                help="Block outputs: stem, 8 residual blocks, pool, logits. Every layer: "
                     "each conv, batch norm, ReLU, pool and linear layer."),
        Setting("cka_n", 10_000, "Images", (1000, 2000, 5000, 10_000),
                {n: f"{n:,}" for n in (1000, 2000, 5000, 10_000)}),
        Setting("cka_kernel", "linear", "Kernel", ("linear", "rbf"),
                {"linear": "linear", "rbf": "RBF (0.8 x median)"}),
        Setting("cka_cell", [0, 0], "Layer pair"),
        Setting("cka_folder", "", "Image folder", help=FOLDER_HELP, server_path=True),
    ),
    "stitching": (
        Setting("st_r", "", "Robust model", help="Empty: model A when you chose a robust "
                "one in the sidebar, else the Linf 8/255 model."),
        Setting("st_s", "", "Standard model", help="Empty: standard seed 0."),
        Setting("st_s2", "", "Second standard model"),
        Setting("st_r2", "", "Second robust model"),
        Setting("st_method", "task", "Matching", ("task", "direct"),
                {"task": "task loss", "direct": "direct"},
                help="Task loss: the stitching layer is trained with cross-entropy through "
                     "the frozen end model. Direct: a closed-form least-squares fit to the end "
                     "model's own activation at that layer (every pixel a sample)."),
        Setting("st_metric", "robust", "Cells show",
                ("clean", "robust", "clean_rel", "robust_rel"),
                {"clean": "clean accuracy", "robust": "robust accuracy",
                 "clean_rel": "clean, relative to the end model",
                 "robust_rel": "robust, relative to the end model"}),
        Setting("st_cell", [0, 0], "Cell"),
        Setting("st_folder", "", "Image folder", help=FOLDER_HELP + " Its fixed shuffle "
                "gives the stitching layer's training images and, after them, the test images.",
                server_path=True),
    ),
    "inversion": (
        Setting("inv_source", "samples", "Images", ("test", "samples", "photos", "upload"),
                {"test": "CIFAR-10 test set", "samples": "CIFAR-10 samples",
                 "photos": "Photos (out of distribution)", "upload": "Your images"}),
        Setting("inv_img", "foolbox-00", "Image"),
        Setting("inv_layer", "avgpool", "Layer", help="The representation to match: the "
                "penultimate layer in the paper, or any earlier tap."),
        Setting("inv_method", "adam", "Optimiser", ("adam", "normgrad"),
                {"adam": "fast (Adam, cosine schedule)",
                 "normgrad": "paper (normalised gradient, step 0.1)"}),
        Setting("inv_steps", None, "Steps", bounds=(10, 10_000),
                help="Empty: the optimiser's own default."),
        Setting("inv_seed", 0, "Seed", bounds=(0, 10_000),
                help="Seed of the starting noise (0.5 + N(0,1)/20)."),
        Setting("inv_page", 0, "Page of the shuffled test set", bounds=(0, 415),
                help="24 images a page, in a fixed shuffle."),
    ),
    "manipulation": (
        Setting("mf_tab", "Feature browser", "Tab",
                ("Feature browser", "Feature addition", "Interpolation", "Misclassification")),
        Setting("mf_feat", "", "Feature"),
        Setting("mf_add_img", "foolbox-00", "Image"),
        Setting("mf_add_index", None, "Feature to add", bounds=(0, 100_000),
                help="A component of the representation; empty: the feature chosen in the "
                     "browser."),
        Setting("mf_ia", "foolbox-00", "Image a"),
        Setting("mf_ib", "foolbox-03", "Image b"),
        Setting("mf_t", 0, "Frame", bounds=(0, 100)),
        Setting("mf_mis", "", "Misclassified image"),
        Setting("mf_folder", "", "Image folder", help=FOLDER_HELP + " The top-activating "
                "images are found among its images.", server_path=True),
    ),
}


def page_settings(page: str) -> dict[str, Setting]:
    """The settings of a page, the shared ones first: {URL key: Setting}."""
    if page not in PAGES:
        raise ValueError(f"unknown page {page!r}; pages: {', '.join(p or '(home)' for p in PAGES)}")
    return {s.key: s for s in COMMON + SETTINGS[page]}


def settings(page: str, params: Mapping[str, Any]) -> dict:
    """The full settings of a view: its parameters (validated) over the page's defaults."""
    known = page_settings(page)
    unknown = set(params) - set(known)
    if unknown:
        raise ValueError(f"page {page or 'home'} has no setting {', '.join(sorted(unknown))}")
    out = {k: s.default for k, s in known.items()}
    for k, v in params.items():
        out[k] = known[k].parse(v)
    return out


def inversion_steps(s: Mapping[str, Any]) -> int:
    """The steps of an inversion view: the chosen number, else the optimiser's default."""
    from . import inversion
    return int(s["inv_steps"]) if s.get("inv_steps") else inversion.DEFAULTS["invert"][s["inv_method"]][0]


def stitch_rows(s: Mapping[str, Any], robust: list[str], standard: list[str],
                chosen_a: bool) -> list[tuple[str, str]]:
    """The four (front, end) rows of the stitching matrix, in jobs.STITCH_PAIRS order.

    The robust model: st_r, else model A if the person chose a robust one (chosen_a),
    else the Linf 8/255 model. The robust -> robust row is the reference pair
    (Linf 8/255 -> L2 1.0) unless st_r2 names the second robust model."""
    def first(*cands: str, pool: list[str], avoid: str = "") -> str:
        return next((c for c in cands if c and c in pool and c != avoid),
                    next((c for c in pool if c != avoid), pool[0]))
    r = first(s.get("st_r", ""), s["a"] if chosen_a else "", STITCH_ROBUST, pool=robust)
    st = first(s.get("st_s", ""), STITCH_STANDARD, pool=standard)
    st2 = first(s.get("st_s2", ""), STITCH_STANDARD_2, pool=standard, avoid=st)
    if s.get("st_r2"):
        pair = (r, first(s["st_r2"], pool=robust, avoid=r))
    else:
        front = first(STITCH_ROBUST, pool=robust)
        pair = (front, first(STITCH_ROBUST_2, pool=robust, avoid=front))
    return [(r, st), (st, r), (st, st2), pair]


# ------------------------------------------------------------------- images

def image_for(key: str, uploads: Mapping[str, np.ndarray] | None = None, size: int = 32
              ) -> tuple[np.ndarray, str, int | None] | None:
    """An image by its gallery key: (uint8 HWC, title, label) or None. Photos are cut
    at `size` (a model's input size); the others come at their own size, and the
    jobs fit them to each model's.

    Uploads exist only in the session that made them: pass that session's
    {key: image} as `uploads`."""
    pools = {"foolbox-": data.cifar_samples, "imagenet-": data.imagenet_samples,
             "photo-": lambda: data.ood_photos(size)}
    prefix = next((p for p in pools if key.startswith(p)), None)
    if prefix is not None:
        s = next((s for s in pools[prefix]() if s.key == key), None)
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
    if key.startswith("upload-") and uploads and key in uploads:
        return uploads[key], "your image", None
    return None


# --------------------------------------------------------------------- jobs

def paper_roles(load: Loader, s: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(robust, standard, whether the roles fit) of models A and B for the paper view, by
    their cards: B is the robust one when only B is; otherwise A (both or neither robust:
    the roles do not fit)."""
    a, b = s["a"], s["b"]
    robust_a, robust_b = zoo.is_robust(load(a).card), zoo.is_robust(load(b).card)
    return (b, a, True) if robust_b and not robust_a else (a, b, robust_a != robust_b)


def cka_pairs(load: Loader, s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (first, second) model pairs a CKA view shows: the paper view's standard
    with itself, robust with itself, standard with robust."""
    if s["cka_view"] == "Paper view":
        robust, standard, _ = paper_roles(load, s)
        return [(standard, standard), (robust, robust), (standard, robust)]
    first, second = s["cka_pair"].split(" vs ")
    spec = {"A": s["a"], "B": s["b"]}
    return [(spec[first], spec[second])]


def cka_title(first: str, second: str, s: Mapping[str, Any]) -> tuple[str, str]:
    """The explore view's title: (the two models, their inputs: once when shared and, when
    adversarial, whose gradients made them)."""
    in_a, in_b = s["cka_in_a"], s["cka_in_b"]
    inputs = (f"{INPUTS[in_a]} inputs" if in_a == in_b
              else f"{INPUTS[in_a]} inputs to {first}, {INPUTS[in_b]} to {second}")
    if in_a != "benign" or in_b != "benign":
        inputs += {"self": ", each model's own", "a": f", made against {first}",
                   "b": f", made against {second}"}[s["cka_against"]]
    return f"{first} vs {second}", inputs


def cka_request(load: Loader, x: str, y: str, layers: str, in_x: str = "benign",
                in_y: str = "benign", against: str = "self", kernel: str = "linear",
                n: int = 10_000, folder: str = "") -> tuple[Job, bool]:
    """The job behind CKA(x, y) and whether its matrix must be transposed: the two
    sides are put in one canonical order (by model, then inputs), so that B vs A is
    A vs B transposed and is computed and shipped once."""
    folder = folder or None
    if (x, in_x) <= (y, in_y):
        return jobs.cka_job(load, x, y, layers, layers, in_x, in_y, against, kernel, n,
                            folder=folder), False
    swapped = {"a": "b", "b": "a"}.get(against, against)
    return jobs.cka_job(load, y, x, layers, layers, in_y, in_x, swapped, kernel, n,
                        folder=folder), True


def transposed_cka(value: Mapping[str, Any]) -> dict:
    """A stored CKA result seen from the other side (rows and columns swapped)."""
    out = dict(value)
    for k in ("matrix", "spread"):
        out[k] = np.asarray(value[k]).T
    for a, b in (("layers_a", "layers_b"), ("model_a", "model_b"), ("attack_a", "attack_b")):
        out[a], out[b] = value[b], value[a]
    out["adv_against"] = {"a": "b", "b": "a"}.get(value["adv_against"], value["adv_against"])
    return out


def cka_requests(load: Loader, s: Mapping[str, Any]) -> list[tuple[Job, bool]]:
    """The (job, transposed) behind each panel of a CKA view."""
    n, layers, kernel = int(s["cka_n"]), s["cka_layers"], s["cka_kernel"]
    folder = s.get("cka_folder", "")
    if s["cka_view"] == "Paper view":
        return [cka_request(load, x, y, layers, s["cka_in_a"], s["cka_in_a"], "self", kernel, n,
                            folder) for x, y in cka_pairs(load, s)]
    (x, y), = cka_pairs(load, s)
    return [cka_request(load, x, y, layers, s["cka_in_a"], s["cka_in_b"], s["cka_against"],
                        kernel, n, folder)]


def cka_jobs(load: Loader, s: Mapping[str, Any]) -> list[Job]:
    return [job for job, _ in cka_requests(load, s)]


def stitch_plan(load: Loader, s: Mapping[str, Any], rows: list[tuple[str, str]]
                ) -> jobs.StitchMatrix:
    """The stitching matrix's jobs, on CIFAR-10 or the view's image folder."""
    return jobs.stitch_matrix(load, rows, s["st_method"], folder=s.get("st_folder") or None)


def stitching_jobs(load: Loader, s: Mapping[str, Any], rows: list[tuple[str, str]]
                   ) -> list[Job]:
    return stitch_plan(load, s, rows).jobs()


def inversion_jobs(load: Loader, s: Mapping[str, Any],
                   uploads: Mapping[str, np.ndarray] | None = None) -> list[Job]:
    """The two reconstructions of the chosen image (none if it is not found)."""
    out = []
    for m in (s["a"], s["b"]):
        found = image_for(s["inv_img"], uploads, load(m).input_size)
        if found is None:
            return []
        out.append(jobs.inversion_job(load, m, found[0], s["inv_layer"], s["inv_method"],
                                      inversion_steps(s), "noise", int(s["inv_seed"])))
    return out


def quality_jobs(load: Loader, s: Mapping[str, Any]) -> list[Job]:
    return [jobs.quality_job(load, m) for m in (s["a"], s["b"])]


def with_component(load: Loader, s: Mapping[str, Any], index: int) -> list[str]:
    """Models A and B, those whose representation has component `index` (features are
    numbered in model A's; a narrower B has fewer)."""
    return [m for m in (s["a"], s["b"]) if index < load(m).representation_size]


def manipulation_jobs(load: Loader, s: Mapping[str, Any],
                      uploads: Mapping[str, np.ndarray] | None = None) -> list[Job]:
    """The jobs of the open tab (a deck slide shows one tab)."""
    probe = load(s["a"])
    feats = jobs.browser_features(probe)
    tab = s["mf_tab"]
    if tab == "Feature browser":
        feat = int(s["mf_feat"][1:]) if s["mf_feat"].startswith("f") else feats[0]
        out = [jobs.feature_grid_job(load, s["a"], feats)]
        out += [jobs.feature_grid_job(load, m, [feat]) for m in with_component(load, s, feat)]
        folder = s.get("mf_folder") or None
        if probe.kind != "cifar10" and not folder:
            return out                       # no images to rank: the tab asks for a folder
        return out + [jobs.top_images_job(load, s["a"], feats, folder=folder)]
    def image(key: str, m: str) -> tuple[np.ndarray, str, int | None] | None:
        return image_for(key, uploads, load(m).input_size)
    if tab == "Feature addition":
        index = s["mf_add_index"] if s["mf_add_index"] is not None else (
            int(s["mf_feat"][1:]) if s["mf_feat"].startswith("f") else feats[0])
        added = [(m, image(s["mf_add_img"], m)) for m in with_component(load, s, int(index))]
        return [] if any(a is None for _, a in added) else [
            jobs.add_feature_job(load, m, a[0], int(index)) for m, a in added]
    if tab == "Interpolation":
        ends = [(m, image(s["mf_ia"], m), image(s["mf_ib"], m)) for m in (s["a"], s["b"])]
        return [] if any(ia is None or ib is None for _, ia, ib in ends) else [
            jobs.interpolation_job(load, m, ia[0], ib[0]) for m, ia, ib in ends]
    if s["mf_mis"]:
        mis = image(s["mf_mis"], s["a"])
        return [] if mis is None or mis[2] is None else [
            jobs.explain_job(load, s["a"], mis[0], mis[2])]
    wrong = misclassified_samples(probe)   # the tab's first image without the data set
    return [jobs.explain_job(load, s["a"], wrong[0][0].image, wrong[0][0].label)] if wrong else []


def image_steps(job: Job) -> int:
    """Optimisation steps x images of an optimisation job (0 for any other): what a
    time estimate multiplies by the seconds of one step of one image."""
    pictures = job.inputs.get("images")
    count = (len(job.inputs.get("indices", [])) or job.inputs.get("frames")
             or (len(pictures) if isinstance(pictures, list) else 1))
    return int(job.inputs.get("steps") or 0) * count


def model_passes(job: Job) -> dict[str, tuple[float, float]]:
    """Images each model of a stitching cell, accuracy, CKA or adversarial-examples job
    takes through a forward pass, and through a forward and backward pass ({} for any
    other job): what a time estimate multiplies by each model's measured seconds of
    each (core.probe.pass_seconds). An accuracy attack is counted at full
    length, though it stops at an image once that is misclassified (bench/estimates.py:
    within 10% of the run, up to 1.5x above it for a standard model)."""
    args, models = job.spec["args"], job.models
    passes: dict[str, tuple[float, float]] = {}

    def add(spec: str, forward: float, gradient: float = 0.0) -> None:
        f, g = passes.get(spec, (0.0, 0.0))
        passes[spec] = (f + forward, g + gradient)
    if job.kind == "adversarial_examples":
        n = job.inputs["images"]["n"]
        add(models[0], n, n * _attack_steps(job.inputs["attack"]))
    elif job.kind == "cka":
        n, sides = job.inputs["images"]["n"], dict(zip("ab", models))
        add(sides["a"], n)
        add(sides["b"], n)
        # on a folder the attacks run inside the job (CIFAR-10's examples are its needs)
        if "folder" in job.inputs["images"]:
            against = job.inputs["adv_against"]
            for side in sides:
                attack = job.inputs[f"inputs_{side}"]
                if attack != "benign":
                    add(sides[side if against == "self" else against], 0, n * _attack_steps(attack))
    elif job.kind in ("stitch_cell", "accuracy"):
        recipe = jobs.stitch_recipe(args["recipe"], args.get("folder"))
        test = job.inputs["test"]["n"]
        robust = min(recipe["robust_images"] or test, test)
        forward, gradient = test + robust, robust * _attack_steps(recipe["attack"].to_dict())
        if job.kind == "accuracy":
            add(models[0], forward, gradient)
        else:
            train, trained = job.inputs["train"]["n"], 0
            if job.inputs["method"] == "direct":
                forward += train
            else:  # the least-squares start, then epochs of training through the end model
                start = ((recipe["init_batches"] or 0) * recipe["batch_size"]
                         if recipe["init"] == "direct" else 0)
                forward += min(start, train)
                trained = recipe["epochs"] * train
            forward += robust   # the stitched representation against the end model's
            # a stitched pass runs the front to the layer and the end from it: half of
            # each; training runs the front without gradients
            front, end = models
            add(front, (forward + trained) / 2, gradient / 2)
            add(end, forward / 2, (gradient + trained) / 2)
    return passes


def _attack_steps(attack: dict) -> int:
    """Forward and backward passes of one image under a PGD attack: one a step."""
    return int(attack["steps"])


def misclassified_samples(probe) -> list[tuple[data.Sample, int]]:
    """The shipped samples of the model's data set it gets wrong, with its predictions."""
    from . import zoo
    return [(s, p) for s, p in zoo.sample_predictions(probe) if p != s.label]


def view_jobs(load: Loader, page: str, params: Mapping[str, Any]) -> list[Job]:
    """Every cached computation the view (page, params) shows, for the shipped zoo."""
    from . import zoo
    s = settings(page, params)
    if page == "cka":
        return cka_jobs(load, s)
    if page == "stitching":
        cards = {n: zoo.card(n) for n in zoo.names()}
        robust = [n for n, c in cards.items() if zoo.is_robust(c)]
        standard = [n for n, c in cards.items() if not zoo.is_robust(c)]
        return stitching_jobs(load, s, stitch_rows(s, robust, standard, s["a"] != DEFAULT_A))
    if page == "inversion":
        return inversion_jobs(load, s) + quality_jobs(load, s)
    if page == "manipulation":
        return manipulation_jobs(load, s)
    return []


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
        try:
            settings(v["page"], v.get("params") or {})  # validates page, names and values
        except ValueError as e:
            raise ValueError(f"{path.name}: view {i + 1}: {e}") from e
        v.setdefault("params", {})
        v.setdefault("title", v["page"])
    return deck


def query_params(view: Mapping[str, Any]) -> dict[str, str]:
    """A deck view as URL query parameters (the format pages read)."""
    known = page_settings(view["page"])
    return {k: known[k].format(v) for k, v in (view.get("params") or {}).items()}
