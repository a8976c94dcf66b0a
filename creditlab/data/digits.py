"""scikit-learn's bundled 8x8 digits: a small data set that works offline and trains in seconds."""

from __future__ import annotations

import numpy as np

TEST_SIZE = 360
VAL_SIZE = 180
SPLIT_SEED = 0  # fixed forever: the split must not change with a run's seed


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1,797 digits as (train_x, train_y, test_x, test_y), x float32 in [0, 1], (N, 64).

    The data set has no official split, so it is shuffled once with numpy's RandomState(0),
    independent of any run seed, and the last 360 shuffled examples become the test set. The
    remaining 1,437 are the training data, whose last 180 the caller holds out for validation
    (1,257 train / 180 val / 360 test by default).
    """
    # Imported here, not at the top: importing sklearn takes about a second.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16).astype(np.float32)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_train = len(x) - TEST_SIZE
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
