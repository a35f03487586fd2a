"""Where a model trains: ``"cpu"`` (NumPy + Numba) or ``"cuda"`` (an NVIDIA GPU, numba.cuda).

    from sparsenn.device import resolve_device
    device = resolve_device("auto")      # "cuda" when a GPU is usable, else "cpu"
    model.to(device)                     # parameters (and later activations) live there
    optimizer = SGD(model.parameters(), lr=0.1)   # its state follows the parameters

The GPU backend needs NVIDIA's ``numba-cuda`` package with the CUDA libraries,
``pip install -e ".[gpu]"``, and a working driver. ``"auto"`` never picks Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, which runs GPU threads as Python threads, for tests);
ask for ``"cuda"`` explicitly to use it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from sparsenn import backend_cpu

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple:
    """``(usable, description)``: whether the CUDA backend can run here, and what it runs on
    (the GPU's name and compute capability, or the simulator), or why not."""
    if importlib.util.find_spec("numba_cuda") is None:
        return False, ("numba-cuda is not installed (install the GPU extra: "
                       "pip install -e \".[gpu]\")")
    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1: correct but very slow)"
    try:
        if not cuda.is_available():
            return False, "no usable NVIDIA GPU or CUDA driver was found"
        dev = cuda.get_current_device()
    except Exception as e:  # a broken driver or toolkit: report it, fall back to the CPU
        return False, f"CUDA is installed but failed to start: {e}"
    gpu = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return True, f"{gpu} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]})"


def is_simulator() -> bool:
    return cuda_status()[0] and cuda_status()[1].startswith("Numba CUDA simulator")


def resolve_device(device: str = "auto") -> str:
    """``"auto" | "cpu" | "cuda"`` -> ``"cpu" | "cuda"``.

    "auto" picks the GPU when one is usable (never the simulator). "cuda" when no GPU is usable
    raises a RuntimeError that says why (package missing, no driver, ...).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return "cpu"
    ok, why = cuda_status()
    if device == "cuda":
        if not ok:
            raise RuntimeError(f"device 'cuda' was asked for, but {why}; use --device cpu or auto")
        return "cuda"
    return "cuda" if ok and not is_simulator() else "cpu"


def describe(device: str) -> str:
    """A line for logs: the device and what it is."""
    if device == "cpu":
        from sparsenn.runtime import thread_info

        info = thread_info()  # also logs the BLAS configuration
        return f"cpu (Numba {info['numba_threading_layer']} threading layer, {info['numba_num_threads']} threads)"
    return f"cuda: {cuda_status()[1]}"


def backend(device: str):
    """The module of array operations for ``device`` ("cpu" or "cuda"):
    :mod:`sparsenn.backend_cpu` or :mod:`sparsenn.backend_cuda`."""
    if device == "cpu":
        return backend_cpu
    if device == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise RuntimeError(f"the CUDA backend is not available: {why}")
        from sparsenn import backend_cuda

        return backend_cuda
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def backend_of(array):
    """The backend that owns ``array`` (a NumPy array: the CPU; a device array: CUDA)."""
    if backend_cpu.is_array(array):
        return backend_cpu
    return backend("cuda")


def to_host(array):
    """A NumPy array with the values of ``array``, wherever it lives."""
    return backend_of(array).to_host(array)
