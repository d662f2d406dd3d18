"""`dataset.train_subset`: train on a random part of the training set, for quick looks and for
studies sized to a CPU.

The subset is drawn from the noisy training set after the noise is injected and before the
validation split is carved: every noise model (human labels and instance-dependent noise index
the full training set) works unchanged, the subset holds that noise draw's labels, and the
validation split comes out of the subset, as it would from a smaller dataset. Its realised
noise rate varies around the full set's (hypergeometrically: ±0.5 pp at 10k of 60k images and
60 % noise). The subset is drawn from `dataset.train_subset_seed`, by default (null) from
`noise.seed`: each noise draw is then a draw of the training images too, which is what makes
two draws independent replicates on clean labels. An integer keeps one subset across the
noise draws. Training seeds never change it. Both keys are part of a run's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def subset_size(ds: Mapping[str, Any], n: int) -> int | None:
    """How many of the `n` training images `dataset.train_subset` keeps (None: all of them).
    A count is taken as is, a fraction in (0, 1) as round(fraction x n)."""
    value = ds.get("train_subset")
    if value is None:
        return None
    return int(value) if isinstance(value, int) else int(round(float(value) * n))


def subset_seed(ds: Mapping[str, Any], noise_seed: int) -> int:
    """The seed of the subset's draw: dataset.train_subset_seed, or the noise seed (null)."""
    seed = ds.get("train_subset_seed")
    return int(noise_seed) if seed is None else int(seed)


def subset_indices(ds: Mapping[str, Any], n: int, noise_seed: int) -> np.ndarray | None:
    """The sorted indices of the training images a run keeps, drawn uniformly without
    replacement (see subset_seed); None when it keeps every image."""
    size = subset_size(ds, n)
    if size is None:
        return None
    rng = np.random.default_rng(subset_seed(ds, noise_seed))
    return np.sort(rng.permutation(n)[:size])
