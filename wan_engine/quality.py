"""The measures that fast modes (fp8, bf16 VAE, compiled blocks) are held to against the exact mode,
shared by the tests and bench/gpu.py so both report the same numbers."""
from __future__ import annotations

import numpy as np
import torch


def relative_l2(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact||, computed in fp64."""
    exact = exact.detach().double()
    return float(torch.linalg.vector_norm(approx.detach().double() - exact) / torch.linalg.vector_norm(exact))


def psnr_db(frames: np.ndarray, exact: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 frames against the exact ones over the whole video, in dB
    (inf when identical)."""
    mse = float(np.mean((frames.astype(np.float64) - exact.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))
