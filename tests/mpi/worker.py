"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: a small data-parallel fit whose ranks
can be made to fail, be killed, or build different models."""

import argparse
import os
import signal
import sys

import numpy as np

from sparsenn import distributed, schedules
from sparsenn.optim import SGD
from sparsenn.train import fit
from tests.test_train import small_model, small_problem


class Noop:
    def on_step_end(self, step, model, optimizer):
        pass


class Fault:
    def __init__(self, rank, step, how):
        self.rank, self.step, self.how = rank, step, how

    def on_step_end(self, step, model, optimizer):
        if step == self.step and self.rank == int(os.environ.get("PMI_RANK", "0")):
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at step {step}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fault", choices=["raise", "kill"])
    p.add_argument("--seed-by-rank", action="store_true")
    p.add_argument("--noop-callback", action="store_true", help="a callback that does nothing (ranks keep own weights)")
    p.add_argument("--save", help="rank 0 writes the final parameters here (.npz)")
    args = p.parse_args()

    def run(comm):
        seed = comm.Get_rank() if args.seed_by_rank else 0
        model = small_model(seed)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        callbacks = [Fault(1, 5, args.fault)] if args.fault else []
        if args.noop_callback:
            callbacks.append(Noop())
        fit(model, small_problem(), opt, schedules.Constant(0.05), epochs=50, batch_size=50, seed=0,
            progress=False, callbacks=callbacks, parallel=distributed.DataParallel(comm, model))
        if args.save and comm.Get_rank() == 0:
            np.savez(args.save, *[p.value for p in model.parameters()])
        return 0

    return distributed.launch(run)


if __name__ == "__main__":
    sys.exit(main())
