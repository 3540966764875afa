"""The one place that configures the MindSpore runtime (mode, device, distribution).

Entry points call :func:`init_context` once before building anything; library modules never call
``ms.set_context`` themselves (DESIGN.md, "Runtime conventions").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import mindspore as ms
from mindspore import communication

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")


def prefer_avx2_cpu_kernels() -> None:
    """Cap oneDNN at AVX2 unless the user chose an ISA (``ONEDNN_MAX_CPU_ISA``).

    MindSpore 2.10's CPU convolutions take an AVX-512 oneDNN path that ran 50-150x slower than the
    AVX2 one on our Xeon CI machines (a 3x3 conv, 64 channels, 2x40x40: 0.55 s vs 0.009 s) and 69-266x
    slower on an AMD EPYC with AVX-512 (see benchmarks/README.md). oneDNN reads the variable at its first
    primitive, so this must run before any Cell executes; :func:`init_context` calls it for CPU.
    """
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


@dataclass(frozen=True)
class RuntimeInfo:
    """Where this process runs: ``rank_id`` in ``[0, rank_size)``; ``distributed`` when launched by msrun."""

    device_target: str
    rank_id: int
    rank_size: int
    distributed: bool

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints (rank 0)."""
        return self.rank_id == 0


def init_context(device_target: str = "CPU", pynative: bool = False, distributed: bool = False,
                 seed: int | None = None) -> RuntimeInfo:
    """Set mode and device, and join the msrun process group when ``distributed``.

    Args:
        device_target: "CPU", "GPU" or "Ascend".
        pynative: run eagerly (debugging) instead of the default graph mode.
        distributed: call ``communication.init()`` and set data-parallel mode with mean gradients.
            The device id comes from msrun's ``DEVICE_ID`` / local rank (0 when unset).
        seed: global seed for MindSpore, NumPy and Python (``ms.set_seed``).

    Returns:
        RuntimeInfo with this process's rank and the world size.

    Raises:
        ValueError: for an unknown device target.
    """
    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {DEVICE_TARGETS}, got {device_target!r}")
    if device_target == "CPU":
        prefer_avx2_cpu_kernels()
    ms.set_context(mode=ms.PYNATIVE_MODE if pynative else ms.GRAPH_MODE)
    local_rank = int(os.environ.get("DEVICE_ID", os.environ.get("LOCAL_RANK", "0")))
    ms.set_device(device_target, local_rank if device_target != "CPU" else 0)
    if device_target == "Ascend" and not pynative:
        ms.set_context(jit_config={"jit_level": "O2"})
    if seed is not None:
        ms.set_seed(seed)
    if not distributed:
        return RuntimeInfo(device_target, 0, 1, False)
    communication.init()
    rank_id, rank_size = communication.get_rank(), communication.get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=rank_size)
    return RuntimeInfo(device_target, rank_id, rank_size, True)


@contextmanager
def pynative_mode():
    """Run the enclosed code in PyNative mode and restore the previous execution mode afterwards.

    Used by :class:`src.evaluation.unpadded.UnpaddedInference`, whose eager parts must not be compiled per input shape.
    """
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)
