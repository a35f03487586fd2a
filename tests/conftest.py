import ctypes.util
import os
import sys


def _nvidia_gpu_present() -> bool:
    """A CUDA driver on this machine (without importing numba.cuda, which reads the flag below)."""
    return os.path.exists("/dev/nvidiactl") or ctypes.util.find_library("cuda") is not None


# The CUDA kernel tests run on a real GPU when there is one, else on Numba's CUDA simulator
# (tiny grids: it runs each GPU thread as a Python thread). The flag must be set before
# numba.cuda is first imported; set NUMBA_ENABLE_CUDASIM yourself to choose either way.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _nvidia_gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
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
