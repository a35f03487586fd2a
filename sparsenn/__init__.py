"""sparsenn: a from-scratch NumPy/Numba engine for training sparse neural-network topologies.

Importing sparsenn configures OpenBLAS so that its idle threads do not compete with Numba's
(see ``sparsenn.runtime``).
"""

from sparsenn.runtime import configure_blas_threads as _configure_blas_threads

_configure_blas_threads()

__version__ = "0.1.0"
