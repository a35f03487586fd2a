"""sparsenn: a from-scratch NumPy/Numba engine for training sparse neural-network topologies."""

__version__ = "0.1.0"
