"""Every CUDA kernel compiled for a real GPU (an H100, compute capability 9.0), without one.

The simulator runs the kernels as Python, so it does not type-check them as the GPU compiler
does. Here each module's ``ptx_examples()`` (every raw kernel, with arguments of the types its
launcher passes) is compiled to PTX with NVVM and, when ``ptxas`` is found, assembled for sm_90.
Needs the CUDA compiler libraries (the ``gpu`` extra), not a GPU; without them the test skips
and says so.
"""

import importlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# Run in a fresh interpreter: the flag is read when numba.cuda is first imported, and this
# process may already have the simulator. Exit code 77 means the CUDA compiler libraries
# (NVVM, NVRTC) were not found.
_COMPILE_ALL = textwrap.dedent("""
    import os, sys
    import numba
    from numba import cuda
    import importlib
    try:
        from cuda.pathfinder import DynamicLibNotFoundError
    except ImportError:
        DynamicLibNotFoundError = OSError
    from numba.cuda.cudadrv.error import NvvmSupportError
    for kernel, args in importlib.import_module(sys.argv[2]).ptx_examples():
        name = kernel.py_func.__name__
        sig = tuple(numba.typeof(a) for a in args)
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        except (DynamicLibNotFoundError, NvvmSupportError) as e:
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(77)
        with open(os.path.join(sys.argv[1], f"{name}.{len(os.listdir(sys.argv[1]))}.ptx"), "w") as fh:
            fh.write(ptx)
""")


def _ptxas():
    for path in ("/usr/local/cuda/bin/ptxas", shutil.which("ptxas")):
        if path and os.path.exists(path):
            return path
    return None


@pytest.mark.parametrize("module", ["sparsenn.cuda_kernels", "sparsenn.cuda_im2col"])
def test_every_kernel_compiles_to_ptx_for_sm90(tmp_path, module):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _COMPILE_ALL, str(tmp_path), module], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip("the CUDA compiler libraries (NVVM, NVRTC) are not installed: "
                    "pip install -e '.[gpu]'\n" + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"compile_ptx failed:\n{proc.stderr}"
    ptx_files = sorted(tmp_path.glob("*.ptx"))
    assert len(ptx_files) == len(importlib.import_module(module).ptx_examples())

    ptxas = _ptxas()
    if ptxas is None:
        return
    # ptxas assembles the PTX for sm_90 as the driver would: too many registers or too much
    # local or shared memory fail here.
    for f in ptx_files:
        res = _assemble(ptxas, f)
        assert res.returncode == 0, f"ptxas failed on {f.name}:\n{res.stderr}"


def _assemble(ptxas, path):
    """ptxas -arch=sm_90 on a PTX file. NVVM from the pip wheels can be newer than a system
    ptxas (CUDA 13.5's NVVM writes '.version 9.5', CUDA 13.0's ptxas stops at 9.0). Then the
    header is lowered to what ptxas reads and the file assembled again: an instruction that
    needs the newer PTX ISA would still be rejected, so the check stays a real one."""
    res = subprocess.run([ptxas, "-arch=sm_90", str(path), "-o", os.devnull],
                         capture_output=True, text=True)
    marker = "current version is '"
    if res.returncode != 0 and "Unsupported .version" in res.stderr and marker in res.stderr:
        supported = res.stderr.split(marker, 1)[1].split("'", 1)[0]
        lines = path.read_text().splitlines(keepends=True)
        lines = [f".version {supported}\n" if ln.startswith(".version ") else ln for ln in lines]
        path.write_text("".join(lines))
        res = subprocess.run([ptxas, "-arch=sm_90", str(path), "-o", os.devnull],
                             capture_output=True, text=True)
    return res
