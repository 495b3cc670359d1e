"""The sinusoid task sampler: tasks are a pure function of (seed, split, index), in range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamlpp.data.sinusoid import SinusoidConfig, SinusoidSampler
from mamlpp.tasks import EpisodeBatch


def tensors(batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
    return batch.xs, batch.ys, batch.xt, batch.yt


def test_tasks_are_a_pure_function_of_seed_split_and_index() -> None:
    sampler = SinusoidSampler(SinusoidConfig(), shots=5, targets=7)
    whole = sampler.batch("train", 3, 10, 6)
    assert whole.xs.shape == (6, 5, 1) and whole.xt.shape == (6, 7, 1)
    assert whole.xs.dtype == torch.float32
    # Any sub-range, drawn on its own, is the same tasks (what exact resume relies on).
    part = sampler.batch("train", 3, 13, 2)
    for a, b in zip(tensors(part), tensors(whole.select(slice(3, 5)))):
        assert torch.equal(a, b)
    again = SinusoidSampler(SinusoidConfig(), shots=5, targets=7).batch("train", 3, 10, 6)
    assert all(torch.equal(a, b) for a, b in zip(tensors(again), tensors(whole)))
    # Another seed, split or index is another task.
    for other in (sampler.batch("train", 4, 10, 6), sampler.batch("test", 3, 10, 6)):
        assert not torch.equal(other.xs, whole.xs)
    assert not torch.equal(sampler.batch("train", 3, 11, 6).xs[0], whole.xs[0])


def test_tasks_cover_the_configured_ranges_and_are_sinusoids() -> None:
    cfg = SinusoidConfig(amplitude=[0.1, 5.0], phase=[0.0, math.pi], input_range=[-5.0, 5.0])
    sampler = SinusoidSampler(cfg, shots=10, targets=10)
    tasks = sampler.tasks("val", 0, 0, 2000)
    assert 0.1 <= tasks.amplitude.min() < 0.3 and 4.8 < tasks.amplitude.max() <= 5.0
    assert 0.0 <= tasks.phase.min() < 0.1 and 3.0 < tasks.phase.max() <= math.pi
    assert -5.0 <= tasks.inputs.min() < -4.9 and 4.9 < tasks.inputs.max() <= 5.0
    batch = sampler.batch("val", 0, 0, 50)
    t = sampler.tasks("val", 0, 0, 50)
    x = torch.cat([batch.xs, batch.xt], 1)[..., 0].double().numpy()
    y = torch.cat([batch.ys, batch.yt], 1)[..., 0].double().numpy()
    np.testing.assert_allclose(x, t.inputs, rtol=1e-6, atol=1e-6)
    want = t.amplitude[:, None] * np.sin(t.inputs - t.phase[:, None])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_a_bad_range_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.amplitude.*low <= high"):
        SinusoidSampler(SinusoidConfig(amplitude=[5.0, 0.1]), shots=5, targets=5)
