"""Run under torchrun with 2 ranks: rank 1 fails with an exception while rank 0 waits in a collective."""

import sys
import time

import torch

from sae_kit.errors import SaeKitError, print_error_line
from sae_kit.training.distributed import session

try:
    with session("test") as ranks:
        if ranks.rank == 1:
            time.sleep(0.5)
            raise RuntimeError("a failure injected on rank 1")
        ranks.all_reduce_(torch.ones(1))  # rank 0 blocks here: rank 1 never joins
except SaeKitError as err:
    print_error_line(f"sae-kit test: error: {err}")  # one write: the ranks share stderr
    sys.exit(1)
