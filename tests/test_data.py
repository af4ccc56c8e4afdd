"""Image sources: CIFAR-10 in both formats, samples, photos, and uploads good and bad."""
from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import image_folder, needs_data
from core import data
from core.errors import DataNotFoundError

RNG = np.random.default_rng(0)


def _write_folder(root, per_class=3, split="test"):
    for c, cls in enumerate(data.CLASSES):
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((32, 32, 3), c * 20 + i, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.png")


def test_imagefolder_tree_is_decoded_once_and_cached(tmp_path):
    _write_folder(tmp_path / "tree")
    ds = data.cifar10("test", tmp_path / "tree")
    assert len(ds) == 30 and ds.images.dtype == torch.uint8
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and y == 1
    assert ds.labels.tolist() == sorted(ds.labels.tolist())
    cached = list((data.cache_dir() / "tensors").glob("cifar10-test-*.pt"))
    assert cached
    again = data.cifar10("test", tmp_path / "tree")
    assert torch.equal(again.images, ds.images)


def test_a_changed_image_folder_is_decoded_again(tmp_path):
    # a file written in place, or added, inside a class folder leaves the split
    # folder's own time as it was: the decoded copy must still not be served
    _write_folder(tmp_path / "tree")
    before = data.cifar10("test", tmp_path / "tree")
    cat = tmp_path / "tree" / "test" / "cat"
    Image.fromarray(np.full((32, 32, 3), 250, dtype=np.uint8)).save(cat / "0000.png")
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(cat / "0009.png")
    after = data.cifar10("test", tmp_path / "tree")
    first_cat = before.labels.tolist().index(3)
    assert len(before) == 30 and len(after) == 31
    assert int(after.images[first_cat].max()) == 250 != int(before.images[first_cat].max())


def test_job_keys_tell_cifar10_from_other_copies_of_it(tmp_path, monkeypatch):
    from core import jobs
    monkeypatch.setenv("HOME", str(tmp_path / "home"))      # no data set of this machine's
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tmp_path / "none"))
    assert data.cifar10_source("test") is None and "source" not in jobs.test_images(10)
    _write_folder(tmp_path / "export")
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tmp_path / "export"))
    export = data.cifar10_source("test")
    assert export.startswith("folder:") and jobs.test_images(10)["source"] == export
    # the copy the shipped results were computed on keeps the keys they ship under
    monkeypatch.setitem(data.REFERENCE_SOURCES, "test", export.split(":")[1])
    assert data.cifar10_source("test") is None and "source" not in jobs.test_images(10)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(
        tmp_path / "export" / "test" / "cat" / "0009.png")
    grown = data.cifar10_source("test")
    assert grown not in (None, export)
    batches = tmp_path / "official" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "test_batch").write_bytes(b"official")
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tmp_path / "official"))
    assert data.cifar10_source("test") is None     # the official batches: CIFAR-10 itself
    # a sweep's Ray worker names the driver's source, whatever its own disk holds
    monkeypatch.setattr(data, "_PROVIDED", {})
    data.provide("test", data.cifar10("test", tmp_path / "export"), grown)
    assert data.cifar10_source("test") == grown


def test_official_batches_through_torchvision(tmp_path, monkeypatch):
    """Batches in the official pickle layout, where torchvision.datasets.CIFAR10 looks."""
    import torchvision
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = [3, 1, 3, 0, 1, 9]
    imgs = RNG.integers(0, 255, (6, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        # Python 2 pickles: keys are native strings, read back with latin1
        pickle.dump({"data": imgs, "labels": labels, "batch_label": "testing batch 1 of 1"},
                    f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.CLASSES)}, f, protocol=2)
    # our fake files cannot carry the official md5 sums
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ds = data.cifar10("test", tmp_path)
    assert ds.labels.tolist() == sorted(labels)  # canonical order: by class, stable
    # label 0 comes from row 3; the two 1s keep their official order (rows 1, 4)
    first = imgs[3].reshape(3, 32, 32)
    assert np.array_equal(ds.images[0].numpy(), first)
    assert np.array_equal(ds.images[1].numpy(), imgs[1].reshape(3, 32, 32))
    assert np.array_equal(ds.images[2].numpy(), imgs[4].reshape(3, 32, 32))


def test_tarball_is_extracted(tmp_path, monkeypatch):
    _write_folder(tmp_path / "src" / "cifar10-jpeg")
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10-jpeg", arcname="cifar10-jpeg")
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    ds = data.cifar10("test", archive)
    assert len(ds) == 30


def test_absent_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataNotFoundError, match="python -m core data --download"):
        data.cifar10("test", tmp_path / "nothing")
    with pytest.raises(ValueError):
        data.locate_cifar10("validation")


@needs_data
def test_real_test_set_when_present():
    ds = data.cifar10("test")
    assert len(ds) == 10_000 and torch.bincount(ds.labels).tolist() == [1000] * 10
    sub = data.fixed_subset(ds, 200)
    assert len(sub) == 200 and len(set(sub.labels.tolist())) == 10


def test_shipped_cifar_samples():
    s = data.cifar_samples()
    assert len(s) == 20 and all(x.image.shape == (32, 32, 3) for x in s)
    assert all(x.label is not None and 0 <= x.label < 10 for x in s)
    assert s[0].tensor().shape == (3, 32, 32)


def test_ood_photos():
    p = data.ood_photos()
    assert len(p) >= 4 and all(x.image.shape == (32, 32, 3) and x.image.dtype == np.uint8 for x in p)


# ---------------------------------------------------------------------- batches

def _sorted_set(per_class: int = 6) -> data.ImageTensorDataset:
    """A data set stored class by class, as CIFAR-10 is; image i's first pixel is i."""
    n = 10 * per_class
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return data.ImageTensorDataset(images, torch.arange(10).repeat_interleave(per_class))


def _indices(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0] * 255).round().long().tolist()


def test_batches_are_seeded_random_by_default_and_in_order_when_asked():
    ds = _sorted_set()
    shuffled = [(_indices(x), y.tolist()) for x, y in data.batches(ds, 8)]
    assert [len(i) for i, _ in shuffled] == [8] * 7 + [4]
    order = [i for idx, _ in shuffled for i in idx]
    assert sorted(order) == list(range(60)) and order != list(range(60))
    assert order == data.shuffled_order(60).tolist()
    assert all(y == [k // 6 for k in idx] for idx, y in shuffled)  # labels follow images
    assert [i for x, _ in data.batches(ds, 8) for i in _indices(x)] == order  # seeded
    assert [i for x, _ in data.batches(ds, 8, shuffle_seed=1) for i in _indices(x)] != order
    in_order = [i for x, _ in data.batches(ds, 8, shuffle_seed=None) for i in _indices(x)]
    assert in_order == list(range(60))
    x, y = next(data.batches(ds, 8))
    assert x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1 and y.dtype == torch.long


def test_a_limit_reads_the_fixed_subset_and_epochs_reshuffle():
    ds = _sorted_set()
    first = [i for x, _ in data.batches(ds, 4, limit=10) for i in _indices(x)]
    subset = data.fixed_subset(ds, 10)
    assert first == [i for x, _ in data.batches(subset, 4, shuffle_seed=None)
                     for i in _indices(x)]
    assert data.batch_sizes(ds, 4, limit=10) == [4, 4, 2]
    epochs = [[i for x, _ in data.batches(ds, 60, epoch=e) for i in _indices(x)]
              for e in range(3)]
    assert epochs[0] == data.shuffled_order(60).tolist()
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[2]) == list(range(60))
    # epoch k is the (k+1)-th draw of one generator (a training loop's epochs)
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randperm(60, generator=gen).tolist() for _ in range(3)]
    assert epochs == draws


def test_other_sources_tensors_samples_and_iterables_of_batches():
    imgs = torch.rand(10, 3, 4, 4)
    got = list(data.batches(imgs, 4, shuffle_seed=None))
    assert torch.equal(torch.cat([x for x, _ in got]), imgs)
    assert (torch.cat([y for _, y in got]) == -1).all()  # unlabelled
    samples = data.cifar_samples()[:5]
    x, y = next(data.batches(samples, 5, shuffle_seed=None))
    assert torch.equal(x, torch.stack([s.tensor() for s in samples]))
    assert y.tolist() == [s.label for s in samples]
    tensors = torch.utils.data.TensorDataset(imgs, torch.arange(10))
    assert [y.tolist() for _, y in data.batches(tensors, 6, shuffle_seed=None)] == [
        list(range(6)), list(range(6, 10))]
    # an iterable of batches is the caller's batching: read as it comes, cut at limit
    given = [(imgs[:3], torch.zeros(3)), (imgs[3:], torch.ones(7))]
    assert [len(x) for x, _ in data.batches(given, 100)] == [3, 7]
    assert [len(x) for x, _ in data.batches(given, 100, limit=5)] == [3, 2]
    assert data.batch_sizes(given, 100, limit=5) == [3, 2]
    assert data.batch_sizes(iter(given), 100) is None  # one-shot: unknown before reading
    loader = torch.utils.data.DataLoader(tensors, batch_size=4)
    assert data.batch_sizes(loader, 100) == [4, 4, 2]
    assert [len(x) for x, _ in data.batches(loader, 100)] == [4, 4, 2]


def test_image_folder_labels_synset_folders_by_their_imagenet_index(tmp_path):
    """A folder of a few ImageNet classes (ImageNette, a subset of the validation set)
    keeps ImageNet's class indices; folders of other names count in sorted order."""
    few = image_folder(tmp_path / "few", ("n01443537", "n15075141"), per_class=1)
    assert data.ImageFolder(few, 32).labels.tolist() == [1, 999]
    assert data.ImageFolder(few, 32).by_synset
    named = image_folder(tmp_path / "named", ("zebra", "cat"), per_class=1)
    folder = data.ImageFolder(named, 32)
    assert folder.classes == ["cat", "zebra"] and folder.labels.tolist() == [0, 1]
    assert not folder.by_synset
    assert len(data.imagenet_synsets()) == 1000


def test_image_folder_streams_at_the_model_size_and_is_named_by_content(tmp_path):
    root = image_folder(tmp_path / "val", ("n01440764", "n01443537"), per_class=3)
    (root / "n01440764" / "notes.txt").write_text("not an image")
    ds = data.ImageFolder(root, 64)
    assert len(ds) == 6 and ds.classes == ["n01440764", "n01443537"]
    x, y = ds[4]
    assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1 and y == 1
    first = ds.identity()
    assert first == data.ImageFolder(root, 64).identity() and first["images"] == 6
    assert data.ImageFolder(root, 32).identity()["folder_sha256"] == first["folder_sha256"]
    Image.new("RGB", (90, 90), (200, 10, 10)).save(root / "n01443537" / "img0.png")
    assert data.ImageFolder(root, 64).identity()["folder_sha256"] != first["folder_sha256"]
    xs = list(data.batches(ds, 4, "cpu", shuffle_seed=0))
    assert [len(b[0]) for b in xs] == [4, 2] and xs[0][0].shape[1:] == (3, 64, 64)
    with pytest.raises(DataNotFoundError, match="no folder"):
        data.ImageFolder(tmp_path / "nowhere", 64)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images in class folders"):
        data.ImageFolder(tmp_path / "empty", 64)
    (root / "loop").symlink_to(root / "loop")       # a link that cannot be followed: no class
    assert data.ImageFolder(root, 64).classes == ds.classes
    (root / "n01443537" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataNotFoundError, match="gone.png cannot be read"):
        data.ImageFolder(root, 64)
