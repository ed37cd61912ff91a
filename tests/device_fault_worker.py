"""`wan-worker run` whose engine fails its first N generations with a cuBLAS execution failure, as a
broken GPU makes it: `python tests/device_fault_worker.py N run [flags]`. The engine, the worker and
the command line are the real ones; only its faults are injected (tests/fault_injection.py)."""
from __future__ import annotations

import sys

from fault_injection import faults
from wan_engine.engine import Engine
from worker.cli import main


def cublas_failure() -> RuntimeError:
    """What torch raises when a cuBLAS call fails on a faulty device (not sticky)."""
    return RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, "
                        "m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`")


def fail_first_generations(count: int) -> None:
    """Make every Engine this process creates fail its first `count` generations."""
    original_init = Engine.__init__

    def init(self: Engine, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        faults(self).device = [cublas_failure() for _ in range(count)]

    Engine.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    fail_first_generations(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
