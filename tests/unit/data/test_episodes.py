"""Episode sampling on a synthetic image array whose every image (and rotation) is recoverable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamlpp.algorithms.meta_learner import EpisodeBatch
from mamlpp.data.dataset import ClassImages
from mamlpp.data.episodes import Augmentation, EpisodeSampler
from mamlpp.data.omniglot import class_splits as omniglot_splits
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.data.splits import RANDOM_ROTATION

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES, PER_CLASS, SIZE = 30, 20, 8
SIZES = (18, 5, 7)
SPLIT_SEED = 11
WAYS, SHOTS, TARGETS = 5, 2, 3


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """uint8 [30, 20, 8, 8] of random content: all 600 images x 4 rotations are distinct."""
    rng = np.random.default_rng(1234)
    return torch.from_numpy(
        rng.integers(0, 256, size=(CLASSES, PER_CLASS, SIZE, SIZE), dtype=np.uint8)
    )


@pytest.fixture(scope="module")
def lookup(images: torch.Tensor) -> dict[bytes, tuple[int, int, int]]:
    """bytes of rot90(image, k) -> (class, image index, k)."""
    table = {}
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            for k in range(4):
                key = torch.rot90(images[c, i], k, dims=(0, 1)).numpy().tobytes()
                table[key] = (c, i, k)
    assert len(table) == CLASSES * PER_CLASS * 4
    return table


def decode(x: torch.Tensor, lookup: dict) -> list[tuple[int, int, int]]:
    """Float images [M, 1, H, W] in [0, 1] -> (class, image, rotation) of each."""
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(u8.float() / 255, x)
    return [lookup[img[0].numpy().tobytes()] for img in u8]


def sampler(images: torch.Tensor, protocol: str = "mamlpp", **kw) -> EpisodeSampler:
    splits = omniglot_splits(CLASSES, SIZES, SPLIT_SEED, protocol, **kw)
    return EpisodeSampler(images, splits, WAYS, SHOTS, TARGETS)


def task_classes(batch: EpisodeBatch, t: int, lookup: dict) -> dict[int, set]:
    """label -> {(class, rotation)} over support and target images of task t."""
    out: dict[int, set] = {}
    for x, y in ((batch.xs[t], batch.ys[t]), (batch.xt[t], batch.yt[t])):
        for (c, _, k), label in zip(decode(x, lookup), y.tolist(), strict=True):
            out.setdefault(label, set()).add((c, k))
    return out


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("split_seed", [0, SPLIT_SEED])
def test_splits_are_disjoint_and_cover(split_seed: int) -> None:
    s = omniglot_splits(CLASSES, SIZES, split_seed, "mamlpp")
    assert [len(s[n]) for n in ("train", "val", "test")] == list(SIZES)
    sets = [set(s[n].chars.tolist()) for n in ("train", "val", "test")]
    assert [len(x) for x in sets] == list(SIZES)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(range(CLASSES))
    assert (s["train"].rotations == RANDOM_ROTATION).all()
    assert (s["val"].rotations == 0).all() and (s["test"].rotations == 0).all()
    assert (
        omniglot_splits(CLASSES, SIZES, split_seed, "mamlpp", False)["train"].rotations == 0
    ).all()

    m = omniglot_splits(CLASSES, SIZES, split_seed, "maml")
    for name, size, chars in zip(("train", "val", "test"), SIZES, sets, strict=True):
        assert len(m[name]) == 4 * size
        pairs = set(zip(m[name].chars.tolist(), m[name].rotations.tolist(), strict=True))
        assert pairs == {(c, k) for c in chars for k in range(4)}  # same characters, 4 rotations


def test_split_seed_changes_the_split() -> None:
    a = omniglot_splits(CLASSES, SIZES, 0, "mamlpp")["train"].chars
    b = omniglot_splits(CLASSES, SIZES, 1, "mamlpp")["train"].chars
    assert set(a.tolist()) != set(b.tolist())
    again = omniglot_splits(CLASSES, SIZES, 0, "mamlpp")["train"].chars
    assert np.array_equal(a, again)


# --------------------------------------------------------------------------- task structure


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_task_structure(images, lookup, split: str) -> None:
    smp = sampler(images)
    split_chars = set(smp.splits[split].chars.tolist())
    batch = smp.batch(split, seed=3, start=0, count=6)
    assert batch.xs.shape == (6, WAYS * SHOTS, 1, SIZE, SIZE)
    assert batch.xt.shape == (6, WAYS * TARGETS, 1, SIZE, SIZE)
    orders = set()
    for t in range(6):
        for y, per in ((batch.ys[t], SHOTS), (batch.yt[t], TARGETS)):
            assert torch.equal(torch.bincount(y, minlength=WAYS), torch.full((WAYS,), per))
            assert y.min() == 0 and y.max() == WAYS - 1
        support, target = decode(batch.xs[t], lookup), decode(batch.xt[t], lookup)
        s_ids = {(c, i) for c, i, _ in support}
        t_ids = {(c, i) for c, i, _ in target}
        assert len(s_ids) == WAYS * SHOTS and len(t_ids) == WAYS * TARGETS  # no repeats
        assert not (s_ids & t_ids)  # support and targets disjoint
        classes = task_classes(batch, t, lookup)
        assert sorted(classes) == list(range(WAYS))
        chars = [next(iter(v))[0] for v in classes.values()]
        assert all(len({c for c, _ in v}) == 1 for v in classes.values())  # one class per label
        assert len(set(chars)) == WAYS  # distinct classes in a task
        assert set(chars) <= split_chars
        orders.add(tuple(classes[label].pop()[0] for label in range(WAYS)))
    # Labels are not tied to a fixed class order.
    assert any(list(o) != sorted(o) for o in orders)


def test_maml_protocol_rotations_are_classes(images, lookup) -> None:
    smp = sampler(images, protocol="maml")
    for split in ("train", "test"):
        pairs = set(zip(smp.splits[split].chars.tolist(), smp.splits[split].rotations.tolist()))
        batch = smp.batch(split, seed=0, start=0, count=8)
        seen_rot = set()
        for t in range(8):
            classes = task_classes(batch, t, lookup)
            assert sorted(classes) == list(range(WAYS))
            assert all(len(v) == 1 for v in classes.values())  # one (char, rotation) per label
            labels = [next(iter(v)) for v in classes.values()]
            assert len(set(labels)) == WAYS
            assert set(labels) <= pairs
            seen_rot |= {k for _, k in labels}
        assert seen_rot == {0, 1, 2, 3}  # rotated classes on every split, test included


# --------------------------------------------------------------------------- determinism


def _equal(a: EpisodeBatch, b: EpisodeBatch) -> bool:
    return all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))


def test_tasks_are_a_function_of_seed_split_index(images) -> None:
    smp = sampler(images)
    a = smp.batch("train", seed=7, start=4, count=3)
    assert _equal(a, sampler(images).batch("train", seed=7, start=4, count=3))
    assert not torch.equal(a.xs, smp.batch("train", seed=8, start=4, count=3).xs)
    assert not torch.equal(a.xs, smp.batch("train", seed=7, start=5, count=3).xs)
    # Task i depends only on its index: a batch is the concatenation of single tasks.
    singles = [smp.batch("train", seed=7, start=4 + i, count=1) for i in range(3)]
    cat = EpisodeBatch(*(torch.cat(ts) for ts in zip(*(vars(s).values() for s in singles))))
    assert _equal(a, cat)
    longer = smp.batch("train", seed=7, start=2, count=6)
    assert _equal(a, longer.select(slice(2, 5)))
    # The split enters the seed: val and test share no class, so compare index draws directly.
    ti_val = smp.task_indices("val", 7, 0, 4)
    ti_test = smp.task_indices("test", 7, 0, 4)
    assert not np.array_equal(ti_val.images, ti_test.images)


def test_sampling_does_not_modify_images(lookup) -> None:
    rng = np.random.default_rng(1234)
    fresh = torch.from_numpy(
        rng.integers(0, 256, size=(CLASSES, PER_CLASS, SIZE, SIZE), dtype=np.uint8)
    )
    before = fresh.clone()
    sampler(fresh).batch("train", seed=0, start=0, count=10)
    assert torch.equal(fresh, before)


# --------------------------------------------------------------------------- rotation


def test_train_rotation_is_per_class_per_task(images, lookup) -> None:
    smp = sampler(images)
    batch = smp.batch("train", seed=1, start=0, count=12)
    seen, mixed = set(), 0
    for t in range(12):
        ks = set()
        for label, pairs in task_classes(batch, t, lookup).items():
            assert len(pairs) == 1, (t, label, pairs)  # all images of a class share one k
            ks.add(next(iter(pairs))[1])
        seen |= ks
        mixed += len(ks) > 1
        # Check the rotation directly against the source image with torch.rot90.
        (c, i, k) = decode(batch.xs[t, :1], lookup)[0]
        want = torch.rot90(images[c, i], k, dims=(0, 1)).float() / 255
        assert torch.equal(batch.xs[t, 0, 0], want)
    assert seen == {0, 1, 2, 3}
    assert mixed >= 6  # rotations are drawn per class, not one per task
    # The same class gets different rotations in different tasks.
    per_class: dict[int, set] = {}
    for t in range(12):
        for pairs in task_classes(batch, t, lookup).values():
            c, k = next(iter(pairs))
            per_class.setdefault(c, set()).add(k)
    assert any(len(ks) > 1 for ks in per_class.values())


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_test_unrotated(images, lookup, split: str) -> None:
    batch = sampler(images).batch(split, seed=1, start=0, count=8)
    for t in range(8):
        for x in (batch.xs[t], batch.xt[t]):
            assert {k for _, _, k in decode(x, lookup)} == {0}


def test_train_rotation_can_be_disabled(images, lookup) -> None:
    batch = sampler(images, train_rotation=False).batch("train", seed=1, start=0, count=8)
    for t in range(8):
        assert {k for _, _, k in decode(batch.xs[t], lookup)} == {0}


def test_torch_gather_matches_an_independent_numpy_host_sampler():
    """The torch episode builder (on the images' device) equals a NumPy gather on the host."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(30, 20, 8, 8), dtype=np.uint8)
    splits = omniglot_splits(30, (18, 5, 7), 3, "mamlpp")
    sampler = EpisodeSampler(torch.from_numpy(images.copy()), splits, ways=4, shots=2, targets=3)
    batch = sampler.batch("train", seed=11, start=5, count=3)
    idx = sampler.task_indices("train", seed=11, start=5, count=3)
    for b in range(3):
        ref = (
            np.stack(
                [
                    np.stack([np.rot90(images[c, i], k) for i in imgs])
                    for c, k, imgs in zip(idx.chars[b], idx.rotations[b], idx.images[b])
                ]
            ).astype(np.float32)
            / 255.0
        )  # [N, K+T, H, W]
        support = ref[:, :2].reshape(-1, 1, 8, 8)
        target = ref[:, 2:].reshape(-1, 1, 8, 8)
        np.testing.assert_array_equal(batch.xs[b].numpy(), support)
        np.testing.assert_array_equal(batch.xt[b].numpy(), target)
        np.testing.assert_array_equal(batch.ys[b].numpy(), np.repeat(np.arange(4), 2))
        np.testing.assert_array_equal(batch.yt[b].numpy(), np.repeat(np.arange(4), 3))


def test_augmentation_and_normalisation_match_an_independent_float_reference():
    """Crop, flip (done on uint8) and the one normalisation equal padding, cropping and
    flipping the float pixels and then (x - mean) / std, as the sampler did before."""
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, size=(30, 20, 2, 6, 6), dtype=np.uint8)
    splits = omniglot_splits(30, (18, 5, 7), 3, "mamlpp")
    mean, std = (0.3, 0.6), (0.2, 0.25)
    aug = Augmentation(crop_padding=2, flip=True)
    sampler = EpisodeSampler(
        ClassImages.from_class_major(torch.from_numpy(images.copy())),
        splits,
        ways=3,
        shots=1,
        targets=2,
        mean=mean,
        std=std,
        augmentation=aug,
    )
    batch = sampler.batch("train", seed=4, start=2, count=2)
    idx = sampler.task_indices("train", seed=4, start=2, count=2)
    m = np.float32(mean).reshape(2, 1, 1)
    s = np.float32(std).reshape(2, 1, 1)
    for b in range(2):
        ref = []
        for n, (c, k) in enumerate(zip(idx.chars[b], idx.rotations[b])):
            for j, i in enumerate(idx.images[b, n]):
                x = np.rot90(images[c, i], k, axes=(1, 2)).astype(np.float32) / np.float32(255)
                x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
                y, z = idx.crop_y[b, n, j], idx.crop_x[b, n, j]
                x = x[:, y : y + 6, z : z + 6]
                x = x[:, :, ::-1] if idx.flips[b, n, j] else x
                ref.append((x - m) / s)
        ref = np.stack(ref).reshape(3, 3, 2, 6, 6)
        np.testing.assert_array_equal(batch.xs[b].numpy(), ref[:, :1].reshape(3, 2, 6, 6))
        np.testing.assert_array_equal(batch.xt[b].numpy(), ref[:, 1:].reshape(6, 2, 6, 6))
    prep = Preprocessing(6, 2, mean, std)
    x = torch.from_numpy(images[0, :3].copy())
    ref = (images[0, :3].astype(np.float32) / np.float32(255) - m) / s
    np.testing.assert_array_equal(prep.normalise(x).numpy(), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampler_builds_the_same_tasks_as_the_cpu_sampler(images) -> None:
    """Images on the GPU: gather, rotation, crop/flip and normalisation happen there, equally."""
    from mamlpp.data.episodes import Augmentation

    splits = omniglot_splits(CLASSES, SIZES, SPLIT_SEED, "mamlpp")
    kw = dict(mean=(0.3,), std=(0.2,), augmentation=Augmentation(crop_padding=2, flip=True))
    cpu = EpisodeSampler(images, splits, WAYS, SHOTS, TARGETS, **kw)
    gpu = EpisodeSampler(images.cuda(), splits, WAYS, SHOTS, TARGETS, **kw)
    for split in ("train", "test"):
        a, b = cpu.batch(split, 3, 0, 4), gpu.batch(split, 3, 0, 4)
        for want, got in zip(vars(a).values(), vars(b).values(), strict=True):
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6)
