"""Data-parallel training over MPI: every rank holds the whole model, each takes a slice of the
global batch, and one Allreduce of a flat float32 buffer averages the gradients.

    mpiexec -n 2 python examples/lenet300.py --topology radix      # same flags, global batch

Why this is all the communication a sparse network needs: the sparsity pattern is fixed, so
every rank's gradient is the same list of ``nnz`` values (plus biases) in the same order. The
gradients of all layers live in one contiguous buffer (each parameter's ``grad`` is a view
into it, so the backward writes there directly and nothing is packed), with one more slot for
the step's loss, and one sum of it over the ranks per step is the whole exchange:
``4 x (connections + biases + 1)`` bytes, proportional to the connections, not to the dense size.
The sum is one ``Allreduce(SUM)``, or, when every rank is on one machine, a sum in an MPI-3
shared-memory window that all ranks' buffers live in (:meth:`DataParallel._average_shared`:
4-6x faster than MPICH's Allreduce here; ``SPARSENN_SHM_REDUCE=0`` turns it off).

The rules, each chosen so that a run does not depend on how many ranks it had:

* **The batch split** (:meth:`DataParallel.shard`): the global batch of a step is the slice of
  the epoch's permutation that a 1-process run would take (a function of seed, epoch and step
  only); rank ``r`` of ``P`` takes its ``r``-th contiguous part. A run can resume on another
  number of ranks.
* **The average**: rank ``r`` computes the mean-loss gradient over its ``b_r`` images and scales
  it by ``b_r / B`` before the sum, so the result is the global batch's mean gradient whatever
  the split (equal to a 1-process run's up to float32 rounding: the sum is taken in another
  order). The loss is reduced the same way, so every rank sees the same loss and stops (on a
  divergence, say) at the same step.
* **Identical steps**: every rank applies the same optimiser step to the same weights with the
  same gradients, so the weights stay equal without being sent; :meth:`DataParallel.check_same`
  compares a checksum of every rank's patterns and weights at the start and after each epoch
  (pruning included), and stops with an error naming the ranks that differ. On one machine,
  without callbacks, the ranks can go further and share one copy of the weights and optimiser
  state (``SPARSENN_SHARE_WEIGHTS=1``; :meth:`DataParallel.start` says why it is off by
  default): each sums and updates only its part of it (``Optimizer.step(part=...)``), between
  two barriers.
* **Rank 0 alone** prints, writes metrics and checkpoints; evaluation is split over the ranks
  and its counts reduced.
* **Faults**: a rank that raises prints its error with its rank and aborts the job
  (``MPI_Abort``), so the others do not wait forever in the next Allreduce. A rank killed
  outright (by hand, or by the out-of-memory killer) cannot say anything itself: under
  :func:`launch` each rank's process is watched by a small parent process (:func:`supervise`,
  as ``torchrun`` watches its workers) that names the rank and the signal and exits, and
  ``mpiexec`` then ends the others.

Without MPI (no ``mpiexec``, or one process) nothing here is used and nothing is imported.
Install: ``pip install -e ".[mpi]"`` (mpi4py and MPICH from the package index) or mpi4py built
against a system MPI.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import time

import numpy as np

# environment variables by which MPI launchers tell a process its rank count
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
INSTALL_HINT = 'pip install -e ".[mpi]" (mpi4py and MPICH), or mpi4py built against your MPI'


def launched_size() -> int:
    """How many processes the launcher started (1 when not under ``mpiexec``), from its
    environment variables, without importing MPI."""
    for var in _SIZE_VARS[:3]:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def world():
    """The MPI world communicator when this process was started by ``mpiexec -n P`` with P > 1,
    else None. Raises RuntimeError (with how to install it) when launched under MPI without
    mpi4py, instead of P copies of the same run each training alone."""
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(f"started by mpiexec with {launched_size()} processes, but mpi4py is not "
                           f"installed: {INSTALL_HINT}") from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def share_cores(comm) -> int:
    """Give each of the ranks on this machine its share of the cores for Numba's threads and
    OpenBLAS's (unless NUMBA_NUM_THREADS is set); returns the thread count. Two ranks each
    running two threads on two cores stall each other's parallel loops and dense products."""
    import numba

    from sparsenn.runtime import set_blas_threads

    if "NUMBA_NUM_THREADS" not in os.environ:
        local = comm.Split_type(split_type=_shared_type()).Get_size()
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // local)))
        set_blas_threads(numba.get_num_threads())
    return numba.get_num_threads()


def _shared_type():
    from mpi4py import MPI

    return MPI.COMM_TYPE_SHARED


def _same_machine(comm):
    """The communicator of the ranks that share this machine's memory, when that is all of
    ``comm``'s ranks (and there are at least 2), else None. Collective."""
    if comm.Get_size() < 2 or not hasattr(comm, "Split_type"):
        return None
    node = comm.Split_type(split_type=_shared_type(), key=comm.Get_rank())
    if node.Get_size() != comm.Get_size():
        node.Free()
        return None
    return node


def run_on_every_rank(comm, fn, *args) -> int:
    """Run ``fn(*args)`` on this rank, with only rank 0's standard output shown, and return its
    exit status. Rank 0 first lists every rank's host and process id. If ``fn`` raises,
    or returns a nonzero status, on any rank, that rank prints why, naming itself, and aborts
    the whole job: the other ranks would otherwise wait forever in their next collective."""
    rank, size = comm.Get_rank(), comm.Get_size()
    where = comm.allgather((socket.gethostname(), os.getpid()))
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    print(f"MPI: {size} ranks: " + ", ".join(f"rank {r} = pid {pid} on {host}" for r, (host, pid) in enumerate(where)),
          flush=True)
    try:
        status = fn(*args)
    except BaseException as e:  # noqa: BLE001  (anything, KeyboardInterrupt included, ends the job)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the abort
        print(f"rank {rank} of {size} failed: {type(e).__name__}: {e}; stopping every rank", file=sys.stderr,
              flush=True)
        _abort(comm, 1)
        raise
    if status:
        print(f"rank {rank} of {size} stopped with exit status {status}; stopping every rank", file=sys.stderr,
              flush=True)
        _abort(comm, int(status))
    return 0


def launch(run) -> int:
    """A script's entry point that works with and without ``mpiexec``: ``run(comm)`` with the
    world communicator, or ``run(None)`` in one process; returns the exit status. Under
    ``mpiexec`` each rank runs supervised (:func:`supervise`)."""
    supervise()
    try:
        comm = world()
    except RuntimeError as e:  # under mpiexec without mpi4py
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(None) if comm is None else run_on_every_rank(comm, run, comm)


def supervise() -> None:
    """Under ``mpiexec`` with P > 1 (on Linux): fork before MPI starts. The child returns from
    this call and runs the job; the parent, the process ``mpiexec`` started, only waits for it.
    If the child dies from a signal (SIGKILL from a user or the out-of-memory killer, a
    segfault), the parent prints which rank died and how, and exits with 128 + the signal, so
    ``mpiexec`` ends the other ranks. ``mpiexec`` alone would name only a process id. Signals
    sent to the parent (Ctrl-C, SIGTERM) are passed on to the child; the child is killed if
    the parent is (``PR_SET_PDEATHSIG``), so no rank outlives the job. Does nothing in one
    process, off Linux, or with ``SPARSENN_NO_SUPERVISOR=1``."""
    if launched_size() <= 1 or not sys.platform.startswith("linux") or os.environ.get("SPARSENN_NO_SUPERVISOR") == "1":
        return
    rank = next((os.environ[v] for v in _RANK_VARS if os.environ.get(v, "").isdigit()), "?")
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)  # its own process group: a signal to the job's group reaches it once, forwarded
        _die_with(parent)
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, _frame: os.kill(child, s))
    _, status = os.waitpid(child, 0)  # retried after a forwarded signal (PEP 475)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = " (killed by hand or by the kernel's out-of-memory killer)" if sig == signal.SIGKILL else ""
        print(f"error: MPI rank {rank} of {launched_size()} (pid {child} on {socket.gethostname()}) died from "
              f"signal {sig} ({signal.Signals(sig).name}){why}; mpiexec now stops the other ranks",
              file=sys.stderr, flush=True)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGKILL when ``parent`` exits (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _abort(comm, status: int) -> None:
    # a moment for mpiexec to forward the message just printed: the abort ends every process,
    # and output still in transit would be lost with them
    time.sleep(1.0)
    comm.Abort(status)


def shard_of(rank: int, size: int, n: int) -> range:
    """Rank ``rank`` of ``size``'s positions in a global batch of ``n``: its contiguous part."""
    return range(rank * n // size, (rank + 1) * n // size)


LANES = 16  # images per unit of the float32 kernels' work: one AVX-512 register (sparsenn.simd)


def batch_split_note(batch_size: int, size: int) -> str | None:
    """What splitting a global batch of ``batch_size`` over ``size`` ranks costs in the sparse
    products, or None when it costs nothing.

    The float32 kernels work on a row of activations 16 images at a time (``LANES``: one
    AVX-512 register, and 64 bytes, one cache line, of the row), so a rank's ``b`` images cost
    ``ceil(b / 16)`` units, and a step waits for the rank with the most. One process at batch
    100 pays 7 units (6 whole and one partly used); 2 ranks of 50 pay 4 each, 8 in all, for the
    same images. Measured on the scaling study's 65,536-wide model (README, "More than one
    machine"): at global batch 100 the forward and backward of 2 ranks x 1 thread took 1.20x
    those of 1 rank x 2 threads, at 128 (64 per rank, whole units) 1.01x.
    """
    counts = [len(shard_of(r, size, batch_size)) for r in range(size)]
    ranks = size * -(-max(counts) // LANES)
    one = -(-batch_size // LANES)
    if size <= 1 or ranks <= one or max(counts) < LANES:  # (under 16 images other costs dominate)
        return None
    step = LANES * size
    lower = batch_size // step * step
    better = " or ".join(str(b) for b in (lower, lower + step) if b > 0)
    each = f"{min(counts)}-{max(counts)}" if min(counts) < max(counts) else str(max(counts))
    return (f"each rank computes {each} of the {batch_size} images of a step, and the sparse kernels "
            f"work in units of {LANES} images (one AVX-512 register of float32, one 64-byte cache line of "
            f"activations): the {size} ranks pay {ranks} units where one process pays {one} "
            f"({ranks / one:.2f}x the work in the sparse products). A global batch that is a multiple of "
            f"{step} ({better}) splits into whole units")


class DataParallel:
    """The per-step exchange of data-parallel training, for ``fit(..., parallel=DataParallel(comm, model))``.

    comm: an mpi4py communicator. model: the model every rank built identically.
    """

    def __init__(self, comm, model, shared=None, share_weights=None):
        self.comm, self.model = comm, model
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.flat = None
        self.bytes_per_step = 0
        self._win = None
        # shared: sum the gradients in one MPI shared-memory window (all ranks on one machine);
        # None = when possible, unless SPARSENN_SHM_REDUCE=0. Else one Allreduce per step.
        self.node = _same_machine(comm) if shared in (None, True) else None
        if shared is None and os.environ.get("SPARSENN_SHM_REDUCE", "1") == "0":
            self.node = None
        if shared and self.node is None:
            raise ValueError("shared=True needs every rank on one machine (MPI COMM_TYPE_SHARED)")
        self.shared = self.node is not None
        self.optimizer = None
        # share_weights: also one copy of the weights and optimiser state (see start); None =
        # only if SPARSENN_SHARE_WEIGHTS=1. Off by default: it saves memory but costs time.
        if share_weights is None:
            share_weights = os.environ.get("SPARSENN_SHARE_WEIGHTS", "0") == "1"
        self._want_shared_weights = bool(share_weights)
        self.share_weights = False  # decided by start()
        self._pwin = None  # the window of the shared weights and optimiser state
        self._bound = []
        self._bind()

    def start(self, optimizer, callbacks=()) -> None:
        """Called by ``fit`` before the first step: the exchange will also step ``optimizer``.

        By default every rank keeps its own weights and optimiser state and takes the whole
        optimiser step. With ``share_weights`` (asked for, the gradients summed in shared memory
        and no callback between the steps), the ranks share one copy of the weights and of the
        optimiser state instead (a second shared-memory window): each rank sums only its own
        part of the gradients and updates only that part of the weights (:meth:`step`), so the
        optimiser's work is not repeated on every rank and the model's memory is not either.

        Why it is not the default: a shared-memory window gets 4 KB pages (Linux gives shared
        memory no transparent huge pages unless ``/sys/kernel/mm/transparent_hugepage/
        shmem_enabled`` allows it; it is ``never`` by default), where a private array this large
        gets 2 MB ones, and the transpose product ``W^T dy`` reads the weights in scattered order
        (through ``t_perm``), so on 4 KB pages its loads miss the TLB. Measured on the scaling
        study's 65,536-wide model (2 ranks x 1 thread, batch 50 each, ``profile_step.py --layers``
        on an Intel Xeon host, emeraldrapids): ``W^T dy`` 67.4 ms per step on shared weights
        against 54.4 on private ones, and the whole step 264.7 against 238.0 ms, the repeated
        optimiser step (12.0 ms against 15.8 for half of it, with the wait) included.

        A callback (pruning, say) reads and writes the weights between steps, and on one shared
        copy each rank's callback would race the others'; with callbacks every rank keeps its
        own weights, as without shared memory."""
        self.optimizer = optimizer
        self.share_weights = self._want_shared_weights and self.shared and not callbacks and optimizer is not None

    def exchange(self) -> str:
        """How the gradients travel, for the run's log."""
        if self.share_weights:
            return (f"gradients summed in shared memory, {self.bytes_per_step:,} bytes (gradients and loss) per step; "
                    f"one copy of the weights and optimiser state, each rank updating 1/{self.size} of it")
        if self.shared:
            return f"gradients summed in shared memory, {self.bytes_per_step:,} bytes (gradients and loss) per step"
        return f"one Allreduce of {self.bytes_per_step:,} bytes (gradients and loss) per step"

    def _bind(self) -> None:
        """Point every parameter's grad into one contiguous float32 buffer (allocated once, and
        again only when pruning changes the number of stored weights)."""
        params = self.model.parameters()
        for p in params:
            if p.value.dtype != np.float32 or not isinstance(p.value, np.ndarray):
                raise TypeError(f"data-parallel training runs float32 models on the CPU; {p.name} is "
                                f"{p.value.dtype} on {type(p.value).__name__}")
        total = sum(p.value.size for p in params)
        old_win = self._win  # the gradients may still be views into it: freed once copied out
        if self.shared:
            self._allocate_shared(total + 1)
        else:
            self.flat = np.zeros(total + 1, dtype=np.float32)  # every gradient, then the step's loss
        offset = 0
        for p in params:
            view = self.flat[offset:offset + p.value.size].reshape(p.value.shape)
            if p.grad.shape == view.shape:
                view[...] = p.grad  # keep a gradient already computed
            p.grad = view
            offset += p.value.size
        self.bytes_per_step = self.flat.nbytes
        self._grads = [p.grad for p in params]
        if old_win is not None:
            old_win.Unlock_all()
            old_win.Free()

    def close(self) -> None:
        """Collective, at the end of training: give every parameter its own gradient array again
        (a copy) and free the shared-memory window. Training with this object again re-binds."""
        if self._win is None:
            return
        self._unshare_weights()
        for p in self.model.parameters():
            p.grad = p.grad.copy()
        self._grads = []
        self.node.Barrier()  # nobody frees while another rank still reads its buffer
        self._win.Unlock_all()
        self._win.Free()
        self._win, self._bufs, self.flat = None, (), None

    def shard(self, idx):
        """This rank's contiguous part of a global batch ``idx`` (the rule depends only on the
        batch and the rank count)."""
        part = self.shard_of(self.rank, len(idx))
        return idx[part.start:part.stop]

    def shard_of(self, rank: int, n: int) -> range:
        """Rank ``rank``'s positions in a global batch of ``n`` (:meth:`shard`'s rule)."""
        return shard_of(rank, self.size, n)

    def batch_note(self, batch_size: int) -> str | None:
        """What splitting a global batch of ``batch_size`` over these ranks costs the sparse
        products, for the run's log (:func:`batch_split_note`), or None."""
        return batch_split_note(batch_size, self.size)

    def average_gradients(self, n_local: int, n_global: int, loss: float) -> float:
        """grad = sum over ranks of (n_local / n_global) x local mean gradient: the global mean.
        The local mean loss rides in the buffer's last slot, so the same Allreduce returns the
        global batch's mean loss (the same number on every rank)."""
        from mpi4py import MPI

        params = self.model.parameters()
        if len(params) != len(self._grads) or any(p.grad is not g for p, g in zip(params, self._grads)):
            self._bind()  # pruning or a restored checkpoint gave some parameters new grads: copy them in
        self.flat[-1] = loss
        if self.share_weights:
            return self._loss_shared(n_local, n_global)
        if self.shared:
            return self._average_shared(n_local, n_global)
        share = np.float32(n_local / n_global)
        self.flat *= share
        self.comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
        return float(self.flat[-1])

    # ---- the shared-memory sum: ranks on one machine ------------------------------------------
    # Every rank's gradient buffer lives in one MPI-3 shared-memory window, mapped into every
    # rank. After the backward (a barrier), rank r sums slice r of all P buffers, each weighted
    # by its rank's share of the batch, and writes the sum into slice r of every buffer
    # (kernels.weighted_sum_into); after a second barrier every buffer holds the average, the
    # same bits on every rank. Each rank reads and writes the buffer's size once: on 2 ranks of
    # this 2-core machine, 2.2 ms for a 36 MB buffer against 10.6 ms for MPICH's Allreduce of it
    # plus 1 ms to scale it first (the 65,536-wide scaling-study model).

    def _allocate_shared(self, n: int) -> None:
        from mpi4py import MPI

        sizes = self.node.allgather(n)  # equal unless the ranks built different models, which
        self._win = MPI.Win.Allocate_shared(4 * n, 4, comm=self.node)  # check_same then reports
        self._bufs = tuple(np.frombuffer(self._win.Shared_query(q)[0], dtype=np.float32, count=sizes[q])
                           for q in range(self.size))
        self._same_sizes = len(set(sizes)) == 1
        self.flat = self._bufs[self.rank]
        self.flat[:] = 0
        self._win.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch, for Sync(): loads and stores only

    def _barrier(self) -> None:
        self._win.Sync()
        self.node.Barrier()
        self._win.Sync()

    def _average_shared(self, n_local: int, n_global: int) -> float:
        from sparsenn.kernels import weighted_sum_into

        weights = self._shares(n_local, n_global)
        n = self.flat.size
        self._barrier()  # every rank's backward has written its buffer
        weighted_sum_into(self._bufs, weights, self.rank * n // self.size, (self.rank + 1) * n // self.size, self._bufs)
        self._barrier()  # every slice is summed into every buffer
        return float(self.flat[-1])

    def step(self) -> None:
        """The optimiser step after :meth:`average_gradients`: every rank's whole step, or, with
        shared weights (:meth:`start`), this rank's part of the gradient sum and of the update,
        then a barrier, after which every rank sees the whole updated model."""
        if not self.share_weights:
            self.optimizer.step()
            return
        from sparsenn.kernels import weighted_sum_into

        if not self._weights_bound():
            self._share()
        part = self.shard_of(self.rank, self.flat.size - 1)  # the gradients, not the loss after them
        lo, hi = part.start, part.stop
        weighted_sum_into(self._bufs, self._batch_weights, lo, hi, (self.flat,))  # the mean gradient, this part
        self.optimizer.step(part=(lo, hi))
        self._barrier()  # every part of the weights is updated

    # ---- shared weights: one copy of the model and optimiser state for the ranks on a machine --
    # After the backward (a barrier) each rank sums slice r of the P gradient buffers into its own
    # buffer (nobody else needs that slice), and updates slice r of the one copy of the weights
    # and optimiser state; after a second barrier every rank reads the same new weights. Per
    # rank and step: reads P/P and writes 1/P of the gradients, and updates 1/P of the model,
    # where summing into every buffer then stepping the whole model read and wrote all of both.

    def _arrays(self) -> list:
        """The arrays the shared window holds, in order: every parameter's value, then every
        parameter's optimiser state."""
        out = [p.value for p in self.model.parameters()]
        for st in self.optimizer.state:
            out.extend(st[k] for k in sorted(st))
        return out

    def _weights_bound(self) -> bool:
        arrays = self._arrays()
        return len(arrays) == len(self._bound) and all(a is b for a, b in zip(arrays, self._bound))

    def _share(self) -> None:
        """Move the weights and optimiser state into one shared window (again after pruning or a
        restored optimiser state replaced some of them). Collective."""
        from mpi4py import MPI

        params = self.model.parameters()
        if len(params) != len(self.optimizer.params) or any(p is not q for p, q in zip(params, self.optimizer.params)):
            raise ValueError("data-parallel training with shared weights needs an optimiser over exactly the "
                             "model's parameters, in order")
        arrays = self._arrays()
        sizes = [(a.size + 15) // 16 * 16 for a in arrays]  # each array on its own 64-byte lines
        old = self._pwin
        win = MPI.Win.Allocate_shared(4 * sum(sizes) if self.rank == 0 else 0, 4, comm=self.node)
        buf = np.frombuffer(win.Shared_query(0)[0], dtype=np.float32, count=sum(sizes))
        win.Lock_all(MPI.MODE_NOCHECK)
        views, offset = [], 0
        for a, n in zip(arrays, sizes):
            views.append(buf[offset:offset + a.size].reshape(a.shape))
            offset += n
        if self.rank == 0:  # the ranks hold the same values (check_same): one copies them in
            for v, a in zip(views, arrays):
                v[...] = a
        win.Sync()
        self.node.Barrier()
        win.Sync()
        for p, v in zip(params, views):
            p.value = v
        k = len(params)
        for st in self.optimizer.state:
            for name in sorted(st):
                st[name] = views[k]
                k += 1
        self._bound = views
        if old is not None:  # no rank reads the old copy any more
            self.node.Barrier()
            old.Unlock_all()
            old.Free()
        self._pwin = win

    def _unshare_weights(self) -> None:
        """Give every parameter and optimiser state its own memory again. Collective."""
        if self._pwin is None:
            return
        for p in self.model.parameters():
            p.value = p.value.copy()
        for st in self.optimizer.state:
            for name in st:
                st[name] = st[name].copy()
        self._bound = []
        self.node.Barrier()
        self._pwin.Unlock_all()
        self._pwin.Free()
        self._pwin = None

    def _loss_shared(self, n_local: int, n_global: int) -> float:
        """With shared weights: wait for every rank's backward; return the global batch's mean
        loss, summed by each rank from every buffer's last slot (which nobody writes before the
        next step's backward, after the barrier that ends this step)."""
        self._batch_weights = self._shares(n_local, n_global)
        self._barrier()  # every rank's backward has written its buffer
        return float(sum(w * b[-1] for w, b in zip(self._batch_weights, self._bufs)))

    def _shares(self, n_local: int, n_global: int) -> np.ndarray:
        """Each rank's share of the global batch (float32), after checking this rank's count."""
        if not self._same_sizes:
            raise ValueError("the ranks' models differ: their gradient buffers have different sizes "
                             f"({', '.join(str(b.size) for b in self._bufs)} values)")
        counts = [len(self.shard_of(q, n_global)) for q in range(self.size)]
        if counts[self.rank] != n_local:
            raise ValueError(f"rank {self.rank} trained on {n_local} images of a batch of {n_global}; "
                             f"DataParallel.shard gives it {counts[self.rank]}")
        return np.array(counts, dtype=np.float32) / np.float32(n_global)

    def sum(self, *values) -> np.ndarray:
        """The sum over ranks of a few float64 numbers (losses, counts)."""
        from mpi4py import MPI

        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def checksum(self) -> str:
        """SHA-256 of every sparse pattern and every parameter value, in order."""
        h = hashlib.sha256()
        for layer in self.model.layers:
            pattern = getattr(layer, "pattern", None)
            if pattern is not None:
                h.update(np.ascontiguousarray(pattern.indptr).tobytes())
                h.update(np.ascontiguousarray(pattern.indices).tobytes())
        for p in self.model.parameters():
            h.update(np.ascontiguousarray(p.value).tobytes())
        return h.hexdigest()

    def check_same(self, when: str) -> None:
        """Stop with a ValueError on every rank unless all ranks hold the same model."""
        digests = self.comm.allgather(self.checksum())
        if len(set(digests)) > 1:
            groups = {}
            for r, d in enumerate(digests):
                groups.setdefault(d, []).append(r)
            parts = "; ".join(f"ranks {v} have {d[:12]}" for d, v in groups.items())
            raise ValueError(f"{when}: the ranks' models differ ({parts}): every rank must build the same "
                             f"model (same seed, masks and checkpoint)")
