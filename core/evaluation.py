"""Measuring the zoo honestly: clean and PGD-20 accuracy, written into the cards."""
from __future__ import annotations

import datetime
import json
import time
from typing import Callable

from . import attacks, zoo
from .data import cifar10, fixed_subset
from .train import hardware


def card_attacks(card: dict) -> list[attacks.PGD]:
    """PGD-20 at the two common CIFAR-10 threat models, plus the model's own."""
    out = [attacks.PGD("linf", 8 / 255, 2 / 255, 20), attacks.PGD("l2", 0.5, 0.125, 20)]
    if card.get("threat_model") == "l2" and abs(card.get("eps", 0) - 0.5) > 1e-9:
        eps = float(card["eps"])
        out.append(attacks.PGD("l2", eps, eps / 4, 20))
    if card.get("threat_model") == "linf" and abs(card.get("eps", 0) - 8 / 255) > 1e-9:
        eps = float(card["eps"])
        out.append(attacks.PGD("linf", eps, eps / 4, 20))
    return out


def own_attack(card: dict) -> attacks.PGD | None:
    """PGD-20 at the threat model the model was trained for (None if standard)."""
    t, eps = card.get("threat_model"), float(card.get("eps") or 0)
    if t == "linf":
        return attacks.PGD("linf", eps, eps / 4, 20)
    if t == "l2":
        return attacks.PGD("l2", eps, eps / 4, 20)
    return None


def measure(name: str, n: int | None = None, root: str | None = None, device: str | None = None,
            write: bool = False, log: Callable[[str], None] = print) -> dict:
    """Clean and PGD-20 accuracy of a shipped model on the CIFAR-10 test set."""
    probe = zoo.load(name, device=device)
    card = zoo.card(name)
    test = cifar10("test", root)
    if n:
        test = fixed_subset(test, n)
    dev = probe.device
    t0 = time.time()
    res: dict = {"n": len(test), "clean": attacks.accuracy(probe, test, device=dev)}
    log(f"{name}: clean {res['clean']:.4f} on {len(test)} images")
    res["pgd"] = {}
    for atk in card_attacks(card):
        acc = attacks.accuracy(probe, test, attack=atk.for_accuracy(), device=dev)
        res["pgd"][atk.describe()] = acc
        log(f"{name}: {atk.describe()} {acc:.4f}")
    res.update({"seconds": round(time.time() - t0, 1), "hardware": hardware(dev),
                "weights_sha256": card.get("weights", {}).get("sha256"),
                "date": datetime.date.today().isoformat(),
                "method": "core.attacks.PGD, fp32, random start, attack on clean-correct images; "
                          "an image counts as robust if no iterate misclassifies it"})
    if write:  # the card records n: the whole test set, or the stated subset
        path = zoo.PRETRAINED / f"{name}.json"
        c = json.loads(path.read_text())
        c["measured"] = res
        path.write_text(json.dumps(c, indent=2) + "\n")
    return res


def check_card(name: str, n: int = 300, root: str | None = None, tolerance: float = 0.06) -> dict:
    """Re-measure a card's clean and own-threat PGD-20 numbers on n images."""
    card = zoo.card(name)
    measured = card.get("measured")
    if not measured:
        raise ValueError(f"{name} has no measured numbers in its card")
    probe = zoo.load(name, device="cpu")
    test = fixed_subset(cifar10("test", root), n)
    out = {"clean": (attacks.accuracy(probe, test), measured["clean"])}
    atk = own_attack(card)
    if atk is not None and atk.describe() in measured["pgd"]:
        out[atk.describe()] = (attacks.accuracy(probe, test, attack=atk.for_accuracy()),
                               measured["pgd"][atk.describe()])
    return out

