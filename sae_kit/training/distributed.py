"""Several processes on PyTorch's own distributed engine: `torch.distributed`, launched by `torchrun`.

    torchrun --nproc-per-node 2 -m sae_kit.cli train …     # sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT

`session(command)` is what the CLI wraps `harvest` and `train` in. Without torchrun's variables
it yields a one-process `Distributed` whose collectives are no-ops, so the stage code is the same
either way. Under torchrun it initialises the default process group (`gloo` on CPU, `nccl` on
CUDA, each rank on `cuda:LOCAL_RANK`), and turns a failure on one rank into the same one-line
error on every rank, never a hang:

- errors every rank can see at the same step (a non-finite loss, a bad batch) are agreed on in
  a collective (`Distributed.agree`, `first_failure`), so all ranks raise the same SaeKitError;
- any other exception on a rank is posted to torchrun's key-value store (the rendezvous
  TCPStore every rank already reaches); a watcher thread on every other rank polls that key,
  prints the same line and exits with status 1 even while its main thread is blocked inside a
  collective. The failing rank waits (≤ 10 s) until the others have printed before it exits,
  since torchrun tears the group down as soon as one worker ends.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from sae_kit.errors import SaeKitError, print_error_line
from sae_kit.lm.models import choose_device

ERROR_KEY = "error"
DONE_KEY = "error_seen"
WATCH_SECONDS = 0.2
EXIT_WAIT_SECONDS = 10.0


class AgreedError(SaeKitError):
    """An error every rank raised together (from a collective), so no rank needs to be told."""


@dataclass
class Distributed:
    """The ranks of this run (one process when WORLD_SIZE is unset) and the collectives stage code uses.

    Every collective is a no-op in one process. Tensors travel on `comm_device` (the rank's GPU
    for NCCL, the CPU for gloo) and come back where they were.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    command: str = ""
    _client: object = field(default=None, repr=False)
    _watch_client: object = field(default=None, repr=False)
    _exiting: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def device(self, requested: str | None) -> torch.device:
        """The device this rank computes on: `requested`, except that 'cuda' (or nothing, where CUDA
        exists) means this rank's own GPU, cuda:LOCAL_RANK."""
        if self.enabled and torch.cuda.is_available() and requested in (None, "auto", "cuda"):
            return torch.device("cuda", self.local_rank)
        return choose_device(requested)

    # -- collectives (no-ops in one process) -----------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank] if self.backend == "nccl" else None)

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce `tensor` over ranks in place (op: sum | max | min) and return it."""
        if not self.enabled:
            return tensor
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        moved = tensor.to(self.comm_device)
        dist.all_reduce(moved, op=ops[op])
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """[tensor of rank 0, tensor of rank 1, …] (same shape on every rank), on tensor's device."""
        if not self.enabled:
            return [tensor]
        moved = tensor.contiguous().to(self.comm_device)
        parts = [torch.empty_like(moved) for _ in range(self.world_size)]
        dist.all_gather(parts, moved)
        return [p.to(tensor.device) for p in parts]

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if not self.enabled:
            return tensor
        moved = tensor.to(self.comm_device)
        dist.broadcast(moved, src=src)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def first_failure(self, value: int | None) -> int | None:
        """The smallest of the ranks' `value`s (None: this rank has none), or None if no rank has one."""
        big = torch.iinfo(torch.long).max
        if not self.enabled:
            return value
        flag = self.all_reduce_(torch.tensor([big if value is None else value], dtype=torch.long), "min")
        return None if int(flag) == big else int(flag)

    def agree(self, failure: str | None) -> None:
        """Collective: raise on every rank, with the same message, if any rank passes a failure.

        Ranks that passed None learn the lowest failing rank's message from the key-value store."""
        if not self.enabled:
            if failure is not None:
                raise SaeKitError(failure)
            return
        first = self.first_failure(self.rank if failure is not None else None)
        if first is None:
            return
        key = f"agree/{first}"
        if self.rank == first:
            self._client.set(key, f"rank {first}: {failure}")
        raise AgreedError(self._client.get(key).decode())

    # -- failures ---------------------------------------------------------------------------

    def _watch(self, stop: threading.Event) -> None:
        """Watcher thread: when another rank posts an error, print it as this rank's and exit."""
        while not stop.wait(WATCH_SECONDS):
            try:
                posted = self._watch_client.check([ERROR_KEY])
            except Exception:  # the store went away: torchrun is tearing the group down
                return
            if posted and not self._exiting:
                message = self._watch_client.get(ERROR_KEY).decode()
                print_error_line(f"sae-kit {self.command}: error: {message}")
                self._watch_client.add(DONE_KEY, 1)
                os._exit(1)

    def _post_failure(self, err: BaseException) -> str:
        """Post this rank's error (the first one posted wins) and wait until the others saw it.

        torchrun stops the other workers as soon as one exits; this rank ignores that SIGTERM
        from here on, so it lives to print its line (the CLI prints it after this returns)."""
        self._exiting = True
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        mine = text if isinstance(err, AgreedError) else (
            f"rank {self.rank}: {text}" if isinstance(err, SaeKitError) else f"rank {self.rank}: {type(err).__name__}: {text}")
        try:
            winner = self._client.compare_set(ERROR_KEY, "", mine).decode()
            self._client.add(DONE_KEY, 1)
            deadline = time.monotonic() + EXIT_WAIT_SECONDS
            while self._client.add(DONE_KEY, 0) < self.world_size and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:
            winner = mine
        return winner


SINGLE = Distributed()
"""One process: every collective is a no-op."""


def _store_client(rank: int) -> object:
    """A client of torchrun's TCPStore (the rendezvous store), with keys private to this attempt."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    client = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=60),
                           wait_for_workers=False)
    attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(f"sae_kit/{attempt}/", client)


@contextlib.contextmanager
def session(command: str, device: str | None = None) -> Iterator[Distributed]:
    """The ranks of this process for the duration of one command (see the module docstring).

    `device` is the device the command will compute on: CUDA (or None where CUDA exists) selects
    NCCL, anything else gloo. Without torchrun's WORLD_SIZE > 1 this yields a one-process
    `Distributed`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Distributed(command=command)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    # two clients: TCPStore clients are not shared between threads
    ranks = Distributed(rank, world, local_rank, backend, command, _client=_store_client(rank),
                        _watch_client=_store_client(rank))
    stop = threading.Event()
    watcher = threading.Thread(target=ranks._watch, args=(stop,), daemon=True, name="sae-kit-rank-watch")
    watcher.start()
    try:
        yield ranks
        ranks.barrier()  # nobody leaves while another rank may still fail
    except (Exception, KeyboardInterrupt) as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        raise SaeKitError(ranks._post_failure(err)) from err
    else:
        ranks._exiting = True
        dist.destroy_process_group()
    finally:
        stop.set()


# ----------------------------------------------------------------------------- data parallelism

AVERAGED_METRICS = ("loss", "mse", "fvu", "l0", "l1")
"""Metrics of a rank's slice of the batch that are averaged over ranks (and every loss_* term)."""


class DataParallel:
    """Data parallelism for one model (a `Slot.parallel`): every rank trains an identical copy on its
    own slice of each global batch; after the backward pass one all-reduce sums every gradient
    and the per-latent firing (for dead-latent tracking), and the gradients are divided by the
    number of ranks: the mean of the slices' mean losses is the global batch's mean loss, so N
    ranks take the step one process takes on the whole batch (to float rounding). Clipping, Adam
    and the decoder constraint then run identically on every rank; no weights are exchanged."""

    def __init__(self, ranks: Distributed):
        self.ranks = ranks

    def prepare(self, slot) -> None:
        """Make rank 0's initial weights everyone's (they already agree when seeded alike)."""
        for tensor in slot.model.state_dict().values():
            self.ranks.broadcast_(tensor)

    def training_loss(self, model, x, state, target=None):
        return model.training_loss(x, state) if target is None else model.training_loss(x, state, target=target)

    @torch.no_grad()
    def sync(self, model, fired: torch.Tensor | None) -> torch.Tensor | None:
        """Average the gradients over ranks; return the latents that fired on any rank."""
        params = list(model.parameters())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        parts = [p.grad.reshape(-1) for p in params]
        if fired is not None:
            parts.append(fired.to(parts[0].dtype))
        flat = self.ranks.all_reduce_(torch.cat(parts))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad)).div_(self.ranks.world_size)
            offset += p.numel()
        return flat[offset:] > 0 if fired is not None else None

    def clip(self, model, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def combine_metrics(self, record: dict) -> dict:
        """The slice metrics averaged over ranks (FVU, MSE, L0, loss terms); the rest agree already."""
        keys = [k for k in record if k in AVERAGED_METRICS or k.startswith("loss_")]
        values = self.ranks.all_reduce_(torch.tensor([float(record[k]) for k in keys], dtype=torch.float64))
        return {**record, **{k: float(v) / self.ranks.world_size for k, v in zip(keys, values.tolist())}}

    @torch.no_grad()
    def share_resampled(self, slot, n: int) -> int:
        """After rank 0 resampled dead latents: everyone takes its weights, Adam moments and tracker."""
        count = self.ranks.broadcast_(torch.tensor([n], dtype=torch.long))
        if int(count):
            for tensor in slot.model.state_dict().values():
                self.ranks.broadcast_(tensor)
            for state in slot.optimizer.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        self.ranks.broadcast_(state[key])
            self.ranks.broadcast_(slot.tracker.last_fired)
        return int(count)

    @torch.no_grad()
    def reduce_moments(self, covariance, keep_on_all: bool) -> None:
        """Sum a closed-form model's moments over ranks: onto every rank (to fit) or onto rank 0
        alone, the others starting again from zero (to checkpoint the total once)."""
        tensors = covariance.state_tensors()
        for tensor in tensors.values():
            self.ranks.all_reduce_(tensor)
        if not keep_on_all and not self.ranks.is_main:
            tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
        covariance.load_state_tensors(tensors)

    def export_state(self, slot) -> None:
        """Before a checkpoint: rank 0's copy is the model; only the moments need gathering."""
        if slot.covariance is not None:
            self.reduce_moments(slot.covariance, keep_on_all=False)

    def after_restore(self, slot) -> None:
        """After loading a checkpoint on every rank: the saved moments count once, on rank 0."""
        if slot.covariance is not None and not self.ranks.is_main:
            slot.covariance.load_state_tensors({k: torch.zeros_like(v)
                                                for k, v in slot.covariance.state_tensors().items()})
