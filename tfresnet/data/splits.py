"""Seeded, stratified hold-out splits."""

import numpy as np

from tfresnet.errors import UserError


def stratified_split(labels, holdout_size, seed=0):
    """Splits indices into (kept, held_out) with ``holdout_size`` held out, every class
    represented in proportion to its size (largest-remainder rounding).

    Args:
        labels: 1-D integer labels.
        holdout_size: number of examples to hold out; 0 holds out nothing.
        seed: the split depends only on the labels and this seed.
    """
    labels = np.asarray(labels)
    if holdout_size == 0:
        return np.arange(len(labels)), np.arange(0)
    if not 0 < holdout_size < len(labels):
        raise UserError(f"a hold-out of {holdout_size} images cannot come from {len(labels)}; "
                        f"pass a --val-size between 0 and {len(labels) - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * holdout_size / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = holdout_size - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    held_out = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, quota)]
    held_out = np.sort(np.concatenate(held_out))
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out
