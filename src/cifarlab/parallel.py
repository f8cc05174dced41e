"""Data-parallel training over several processes (torch.distributed, gloo backend).

On a small CPU, one process per core beats one process with a thread per core: small
convolutions leave OpenMP threads waiting at barriers, while separate processes never wait
for each other except in one gradient all-reduce per step. `launch_local` forks the processes
of one machine (`train.processes`); a run started by `torchrun` (one process per core or per
machine) is picked up from its environment instead. Rank 0 evaluates, logs and writes the run
directory; every rank trains on its share of each batch.
"""

from __future__ import annotations

import datetime
import inspect
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import CifarlabError

TIMEOUT = datetime.timedelta(minutes=30)  # longest a rank waits for the others (rank 0 tests)
_eval_threads: int | None = None  # threads rank 0 may use while the other ranks wait
_joined = False  # this process joined torchrun's process group


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def from_environment() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment)."""
    global _joined
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=TIMEOUT)
    _joined = True
    return True


def exit_torchrun_rank(code: int) -> None:
    """End a process that joined torchrun's group, once its command is done. Left to the
    interpreter's teardown, gloo's threads abort about one exit in six ("terminate called
    without an active exception"), which torchrun reports as a failed run: leave the group,
    flush and exit at once. Does nothing in any other process."""
    if not _joined:
        return
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_sum(*values: float) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_rank0(*values: float) -> list[float]:
    """Rank 0's values on every rank (decisions such as 'stop now' must agree)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


class TrainingProcesses:
    """The processes that train one run, as the training loop sees them. With one process
    every method is the identity; with several, rank 0 evaluates and decides, every rank
    trains on its share of each batch, and the decisions are agreed on here."""

    def __init__(self) -> None:
        self.rank, self.world = rank_world()
        self.main = self.rank == 0

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's share of a batch's indices."""
        return idx[self.rank::self.world]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return wrap(model) if self.world > 1 else model

    def sum(self, *values: float) -> list[float]:
        return all_sum(*values) if self.world > 1 else list(values)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision on every rank."""
        return bool(from_rank0(flag)[0]) if self.world > 1 else flag

    def epoch_generator(self, seed: int, epoch: int, gen: torch.Generator) -> torch.Generator:
        """The augmentation generator of an epoch: the run's own with one process; with
        several, each rank its own draws (and dropout seed), resumable per epoch."""
        if self.world == 1:
            return gen
        torch.manual_seed(seed * 100_019 + epoch * 1013 + self.rank)
        return torch.Generator().manual_seed(seed * 100_003 + epoch * 1009 + self.rank)


def broadcast_object(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP: identical start weights (rank 0's), gradients averaged over ranks each step.
    BatchNorm statistics stay per rank (each normalises its own share of the batch)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch >= 2.13 renamed the option; older releases only know broadcast_buffers
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
           else "broadcast_buffers")
    return ddp(model, gradient_as_bucket_view=True, **{key: False})


@contextmanager
def eval_threads():
    """Let rank 0 use the idle ranks' cores while it evaluates (same machine only)."""
    if _eval_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(_eval_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init(rank: int, world: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=TIMEOUT)


def _child(rank: int, world: int, store: str, fn: Callable[[], object], threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        _init(rank, world, store)
        fn()
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - report in one line, exit non-zero
        # rank 0 puts the message in its own error if it has to fail because of this one
        msg = str(e) if isinstance(e, CifarlabError) else f"{type(e).__name__}: {e}"
        with open(os.path.join(os.path.dirname(store), f"error-{rank}"), "w") as f:
            f.write(msg)
        os._exit(1)
    os._exit(0)


def _worker_failed(tmp: str, rank: int, exitcode: int | None) -> CifarlabError:
    try:
        with open(os.path.join(tmp, f"error-{rank}")) as f:
            why = f.read().strip()
    except OSError:  # killed before it could say why
        why = f"exit code {exitcode}"
    return CifarlabError(f"worker process {rank} failed: {why}")


def launch_local(processes: int, fn: Callable[[], object]):
    """Run fn() in `processes` forked processes of this machine; return rank 0's result.

    The threads this process may use are split between the processes; rank 0 (this process)
    gets them all back while it evaluates.
    """
    global _eval_threads
    if "fork" not in mp.get_all_start_methods():
        raise CifarlabError("train.processes > 1 needs a platform that can fork (Linux); "
                            "use torchrun elsewhere")
    threads = torch.get_num_threads()
    per = max(1, threads // processes)
    tmp = tempfile.mkdtemp(prefix="cifarlab-ddp-")
    store = os.path.join(tmp, "store")
    ctx = mp.get_context("fork")
    children = [ctx.Process(target=_child, args=(r, processes, store, fn, per), daemon=True)
                for r in range(1, processes)]
    for c in children:
        c.start()
    torch.set_num_threads(per)
    _eval_threads = threads
    try:
        _init(0, processes, store)
        try:
            result = fn()
        except RuntimeError:  # a collective failed: a worker died first
            for c in children:  # the peer's socket closes before its exit is visible
                c.join(timeout=10)
            dead = [r for r, c in enumerate(children, 1) if not c.is_alive()
                    and c.exitcode not in (0, None)]
            if dead:
                raise _worker_failed(tmp, dead[0], children[dead[0] - 1].exitcode) from None
            raise
        finally:
            dist.destroy_process_group()
        for c in children:
            c.join(timeout=60)
        failed = [(r, c.exitcode) for r, c in enumerate(children, 1) if c.exitcode != 0]
        if failed:
            raise _worker_failed(tmp, *failed[0])
        return result
    finally:
        _eval_threads = None
        torch.set_num_threads(threads)
        for c in children:  # SIGKILL: a worker waiting in a collective (C code) runs no
            if c.is_alive():  # Python signal handler, so SIGTERM could leave it for TIMEOUT
                c.kill()
                c.join()
        shutil.rmtree(tmp, ignore_errors=True)
