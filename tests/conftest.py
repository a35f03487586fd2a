import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_mask(rng, n_out, n_in, density, empty_rows=(), empty_cols=()):
    """A boolean (n_out, n_in) mask with the given rows/columns emptied."""
    m = rng.random((n_out, n_in)) < density
    for r in empty_rows:
        m[r] = False
    for c in empty_cols:
        m[:, c] = False
    return m
