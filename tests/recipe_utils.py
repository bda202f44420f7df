"""Test helper (run as a script): a recipe under Accelerate's FSDP2 code path on CPU processes (gloo).

Accelerate 1.15 turns FSDP on only when the process group is a GPU-type one: ``AcceleratorState.__init__`` sets
``DistributedType.FSDP`` only from MULTI_GPU / MULTI_XPU / MULTI_NPU / ... . A CPU launch
(``ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/configs/accelerate/fsdp.yaml ...``) is
MULTI_CPU, so Accelerate ignores the FSDP settings without a word and trains with plain DDP. PyTorch's FSDP2
(``fully_shard``) itself works on CPU over gloo, so this wrapper relabels the CPU process group as MULTI_GPU
(the device stays ``cpu``, the backend gloo) before the ``Accelerator`` is built; everything after that is
Accelerate's own FSDP2 path: ``fully_shard`` per transformer block, ``set_requires_gradient_sync`` for
accumulation, DTensor-aware clipping, sharded ``save_state``/``load_state`` and the gathered final state dict.
Each process prints one ``[recipe_utils] rank R: distributed_type=... fsdp2=...`` line at ``prepare``, so the
test can check that the run really was FSDP2.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/configs/accelerate/fsdp.yaml --num_processes 2 \\
        --mixed_precision no tests/recipe_utils.py recipes/continue_pretrain.py --config ...

Not for real runs: on CPU there is nothing to gain from sharding; use ``cpu.yaml``.
"""

from __future__ import annotations

import runpy
import sys


def force_fsdp_on_cpu() -> None:
    import accelerate
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original_init = state.PartialState.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.MULTI_GPU  # lets AcceleratorState take its FSDP branch

    state.PartialState.__init__ = init

    original_prepare = accelerate.Accelerator.prepare

    def prepare(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        print(f"[recipe_utils] rank {self.process_index}: distributed_type={self.distributed_type.name} "
              f"fsdp2={self.is_fsdp2} device={self.device}", flush=True)
        return original_prepare(self, *args, **kwargs)

    accelerate.Accelerator.prepare = prepare


if __name__ == "__main__":
    force_fsdp_on_cpu()
    script, *rest = sys.argv[1:]
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")
