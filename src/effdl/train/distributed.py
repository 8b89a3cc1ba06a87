"""Data-parallel training across the processes torchrun starts: process group, ranks, collectives.

`torchrun --nproc_per_node N -m effdl train ...` starts N copies of effdl with the rendezvous
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set; `init_from_env` joins
them into one torch.distributed process group (NCCL between GPUs with gloo beside it for CPU
tensors, gloo alone on CPUs) and the trainer wraps the model in DistributedDataParallel. This
module holds the small pieces around that: which device a process takes (cuda:LOCAL_RANK),
the per-process batch, agreement on errors (every process raises the same one, rank 0 reports
it), BatchNorm statistics averaged across processes, exact reduction of sharded evaluations,
a check that the weights stayed identical, and SyncBatchNorm conversion and its undoing.

Without torchrun's variables nothing here starts a process group and every helper answers as a
single process would (rank 0 of 1), so single-process code paths call them unconditionally.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from effdl.errors import EffdlError

T = TypeVar("T")

# What torchrun (and any launcher following its env:// convention) sets in every process.
RENDEZVOUS_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class AgreedError(EffdlError):
    """An error every process raised identically (rank 0 reports it; the others stay silent)."""


class PeerFailure(EffdlError):
    """Another training process stopped (died, was killed, or failed) while this one waited for it."""


@dataclass(frozen=True)
class Context:
    """This process's place in the process group."""

    rank: int  # 0 .. world_size-1, over all machines
    local_rank: int  # index on this machine: its GPU is cuda:local_rank
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_context: Context | None = None


def launched_by_torchrun() -> bool:
    """True when any rendezvous variable is set (this process was started by torchrun or alike)."""
    return any(name in os.environ for name in RENDEZVOUS_VARIABLES)


def current() -> Context | None:
    """The process group this process trains in, or None when training alone."""
    return _context if _context is not None and dist.is_initialized() else None


def rank() -> int:
    return current().rank if current() is not None else 0


def world_size() -> int:
    return current().world_size if current() is not None else 1


def is_main() -> bool:
    """Whether this process writes run directories, logs and checkpoints (rank 0, or alone)."""
    return rank() == 0


def process_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with `local_rank` for the config's `device` (auto, cpu, cuda).

    `auto` and `cuda` mean cuda:LOCAL_RANK when CUDA is present (one GPU per process, as DDP
    expects); one fixed `cuda:N` for every process is refused, since N processes cannot share it.
    """
    from effdl.device import resolve_device

    if name in ("auto", "cuda"):
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise EffdlError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                                 "start at most that many processes per machine (--nproc_per_node)")
            return torch.device("cuda", local_rank)
        if name == "cuda":
            raise EffdlError("device cuda requested but CUDA is not available")
        return torch.device("cpu")
    device = resolve_device(name)
    if device.type == "cuda":
        raise EffdlError(f"--device {name} names one GPU for every process: under torchrun give --device cuda "
                         "(or auto), and each process takes cuda:LOCAL_RANK")
    return device


def check_same_device_kinds(kinds: list[str]) -> None:
    """Refuse (one line) processes on different device kinds, e.g. ['cuda', 'cpu'] by rank."""
    if len(set(kinds)) > 1:
        where = ", ".join(f"rank {r}: {k}" for r, k in enumerate(kinds))
        raise AgreedError(f"the training processes run on mixed devices ({where}); "
                          "give every process the same --device")


def init_from_env(device: str = "auto") -> Context | None:
    """Join the process group torchrun describes in the environment; None when not under torchrun
    (or with a world of one process). Idempotent: a second call returns the same context.

    Raises EffdlError when a rendezvous variable is missing or malformed, when the device cannot
    be given to every process, and (on every process alike) when processes use mixed devices.
    """
    global _context
    if current() is not None:
        return _context
    if not launched_by_torchrun():
        return None
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise EffdlError(f"torchrun's rendezvous variable {', '.join(missing)} is not set: launch with "
                         "`torchrun --nproc_per_node N -m effdl train ...` (or set all of "
                         f"{', '.join(RENDEZVOUS_VARIABLES)})")
    try:
        rank_, local_rank, world = (int(os.environ[n]) for n in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        raise EffdlError("RANK, LOCAL_RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank_ < world:
        raise EffdlError(f"RANK {rank_} is outside WORLD_SIZE {world}")
    if world == 1:
        return None
    device_ = process_device(device, local_rank)
    if device_.type == "cuda":
        torch.cuda.set_device(device_)
    # gloo always (CPU tensors, object exchange), NCCL for CUDA tensors when CUDA is present.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    _context = Context(rank_, local_rank, world, device_)
    atexit.register(_shutdown)
    kinds = [None] * world
    dist.all_gather_object(kinds, device_.type)
    check_same_device_kinds(kinds)
    return _context


def _shutdown() -> None:
    global _context
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _context = None


def per_process_batch(batch_size: int, world: int | None = None) -> int:
    """The batch each process trains on so that the global batch is `batch_size`.

    Raises EffdlError when the number of processes does not divide `batch_size`.
    """
    world = world_size() if world is None else world
    if batch_size % world:
        raise EffdlError(f"batch size {batch_size} is not divisible by the {world} training processes: "
                         f"give a multiple of {world} (the batch size is the global one, split evenly)")
    return batch_size // world


# -- agreement and exchange ------------------------------------------------------------------------
def broadcast_object(value: T, src: int = 0) -> T:
    """`value` as rank `src` has it, on every process (pickled between our own processes only)."""
    if current() is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main_then_share(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 alone and hand its result to every process. An EffdlError there is raised
    on every process as an AgreedError with the same message (rank 0 reports it once)."""
    if current() is None:
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except EffdlError as exc:
            outcome = ("error", str(exc))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise AgreedError(outcome[1])
    return outcome[1]


def agree(fn: Callable[[], T]) -> T:
    """Run `fn` on every process; if it raises EffdlError on any, every process raises the first
    such error (by rank), naming that rank when it is not rank 0."""
    if current() is None:
        return fn()
    try:
        result, problem = fn(), None
    except EffdlError as exc:
        result, problem = None, str(exc)
    problems = [None] * world_size()
    dist.all_gather_object(problems, problem)
    for r, message in enumerate(problems):
        if message is not None:
            raise AgreedError(message if r == 0 else f"(rank {r}) {message}")
    return result


def barrier() -> None:
    if current() is not None:
        dist.barrier()


# -- model state -------------------------------------------------------------------------------------
def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel on this process's device (rank 0's weights and buffers are
    broadcast to every process as it is built). Raises AgreedError when the processes' models differ
    in shape (each process must build and compress the same model)."""
    ctx = current()
    if ctx is None:
        return model
    try:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            # BatchNorm statistics follow rank 0's at each forward, so rank 0's checkpoint is the
            # whole state (a resumed run continues exactly); they are averaged before evaluations.
            forward_sync_buffers=True,
        )
    except RuntimeError as exc:
        if any(word in str(exc) for word in ("shape", "params", "parameters", "across all ranks")):
            raise AgreedError(f"the processes' models differ: {str(exc).splitlines()[0]}") from None
        raise


@torch.no_grad()
def sync_module_state(model: nn.Module, src: int = 0) -> None:
    """Give every process rank `src`'s parameters and buffers, through `load_state_dict` so modules
    that cache what their buffers say (lazily initialised quantizers) read them again."""
    if current() is None:
        return
    state = model.state_dict()
    for tensor in state.values():
        dist.broadcast(tensor, src=src)
    model.load_state_dict(state)


def _batchnorms(model: nn.Module) -> Iterator[nn.modules.batchnorm._NormBase]:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            yield module


@torch.no_grad()
def average_batchnorm(model: nn.Module) -> None:
    """Set every BatchNorm's running mean and variance to their average over the processes, in place
    (each process saw only its shard of the last batches), as timm's distribute_bn does."""
    if current() is None:
        return
    for bn in _batchnorms(model):
        for buffer in (bn.running_mean, bn.running_var):
            if buffer is not None:
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world_size())


def reduce_sums(*values: float | int, device: torch.device | None = None) -> list[float]:
    """Each value summed over the processes (in float64, so counts stay exact)."""
    if current() is None:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or current().device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def reduce_accuracy(acc):
    """An `effdl.measure.accuracy.Accuracy` over every process's shard: the counts of correct and
    total images are summed exactly, the mean loss is weighted by each shard's size."""
    from effdl.measure.accuracy import Accuracy

    if current() is None:
        return acc
    correct, total, loss_sum = reduce_sums(acc.correct, acc.total, acc.loss * acc.total)
    return Accuracy(int(round(correct)), int(round(total)), loss_sum / max(total, 1.0))


@torch.no_grad()
def parameter_checksums(model: nn.Module) -> torch.Tensor:
    """Per-parameter float64 sums of values and squares: equal across processes iff (with
    overwhelming likelihood) the weights are."""
    params = [p for p in model.parameters()]
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params]).flatten()


def check_in_sync(model: nn.Module, when: str) -> None:
    """Raise AgreedError on every process if the processes' weights differ (a hook that changed
    them differently per process); one all-gather of two numbers per parameter."""
    if current() is None:
        return
    local = parameter_checksums(model).to(current().device)
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    differing = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise AgreedError(f"the weights of rank(s) {', '.join(map(str, differing))} differ from rank 0's {when}: "
                          "a callback changed them differently per process")


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of tensors that DDP does not see (callbacks' own parameters)."""
    if current() is None:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size())


# -- SyncBatchNorm -----------------------------------------------------------------------------------
def convert_sync_batchnorm(model: nn.Module) -> dict[str, type]:
    """Turn every BatchNorm of `model` into torch's SyncBatchNorm in place (statistics over the
    global batch); returns {module name: original class} for `revert_sync_batchnorm`. Convert after
    quantizers and structural edits are attached and before DDP wraps the model."""
    from effdl.core.modules import replace_submodule

    originals = {name: type(m) for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)}
    for name in originals:
        replace_submodule(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(model.get_submodule(name)))
    return originals


def revert_sync_batchnorm(model: nn.Module, originals: dict[str, type]) -> None:
    """Put back the BatchNorm classes `convert_sync_batchnorm` replaced, sharing the same parameter
    and buffer tensors (an optimizer holding them keeps working)."""
    from effdl.core.modules import replace_submodule

    for name, cls in originals.items():
        sync = model.get_submodule(name)
        if not isinstance(sync, nn.SyncBatchNorm):
            continue
        bn = cls(sync.num_features, sync.eps, sync.momentum, sync.affine, sync.track_running_stats)
        bn.weight, bn.bias = sync.weight, sync.bias
        bn.running_mean, bn.running_var = sync.running_mean, sync.running_var
        bn.num_batches_tracked = sync.num_batches_tracked
        bn.train(sync.training)
        for attr, value in vars(sync).items():  # hooks, effdl attributes set on the module
            if attr.startswith("effdl_"):
                setattr(bn, attr, value)
        replace_submodule(model, name, bn)


# -- stopping ----------------------------------------------------------------------------------------
_PEER_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "remote worker", "NCCL",
                         "Gloo", "gloo", "Broken pipe", "timed out", "Timed out")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another process stopped."""
    dist_error = getattr(dist, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_FAILURE_MARKERS)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (what torchrun sends the surviving processes when one dies or
    when it is stopped) raises KeyboardInterrupt like Ctrl-C, so rank 0 saves a resumable state."""
    if current() is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

