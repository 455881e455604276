"""Parity metrics on constructed cases: identical outputs, known noise, flipped predictions."""

from __future__ import annotations

import numpy as np
import pytest

from eca_deploy.errors import EcaDeployError
from eca_deploy.parity import DEFAULT_TOLERANCES, compare_outputs, seeded_inputs


@pytest.fixture
def logits():
    return np.random.default_rng(0).standard_normal((8, 1000)).astype(np.float32)


def test_identical_outputs_have_zero_error(logits):
    metrics = compare_outputs(logits, logits.copy())
    assert metrics.max_abs_error == 0.0 and metrics.max_elementwise_rel_error == 0.0
    assert metrics.cosine_similarity == pytest.approx(1.0) and metrics.top1_agreement == 1.0
    assert metrics.passes(DEFAULT_TOLERANCES["fp32"])


def test_known_noise_is_measured_and_judged_per_precision(logits):
    noisy = logits + np.float32(3e-3) * np.sign(np.random.default_rng(1).standard_normal(logits.shape)).astype(np.float32)
    metrics = compare_outputs(logits, noisy)
    assert metrics.max_abs_error == pytest.approx(3e-3, rel=1e-3)
    assert not metrics.passes(DEFAULT_TOLERANCES["fp32"])
    assert metrics.passes(DEFAULT_TOLERANCES["fp16"])


def test_flipped_top1_fails_even_with_small_error(logits):
    flipped = logits.copy()
    top = logits.argmax(-1)
    runner_up = np.argsort(logits, axis=-1)[:, -2]
    rows = np.arange(len(logits))
    flipped[rows, runner_up] = logits[rows, top] + 1e-3
    metrics = compare_outputs(logits, flipped)
    assert metrics.top1_agreement == 0.0
    assert not metrics.passes(DEFAULT_TOLERANCES["fp16"])


def test_shape_mismatch_is_a_user_error(logits):
    with pytest.raises(EcaDeployError, match="output shapes differ"):
        compare_outputs(logits, logits[:4])


def test_seeded_inputs_are_reproducible():
    a, b = seeded_inputs(3, (3, 8, 8), seed=5), seeded_inputs(3, (3, 8, 8), seed=5)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, seeded_inputs(3, (3, 8, 8), seed=6))
