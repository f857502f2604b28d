"""Several processes (`torchrun`, `accelerate launch`): which one this is, and gathering what each did.

Only commands launched that way touch this module; a plain run never imports accelerate for it.
"""

from __future__ import annotations

import os


def launched_processes() -> int:
    """How many processes the launcher started (1 for a plain run)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


class Processes:
    """This process's place among the launched ones (CPU: gloo; CUDA: one GPU per process)."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        self._state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self._state.process_index, self._state.num_processes
        self.device = self._state.device
        self.is_main = self._state.is_main_process

    def gather(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process."""
        from accelerate.utils import gather_object

        return gather_object(items)

    def close(self) -> None:
        """End the process group once nothing more is gathered. Left to the interpreter's teardown, its gloo
        threads sometimes aborted a finished process ("terminate called without an active exception", exit -6),
        and torchrun then failed the run."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
