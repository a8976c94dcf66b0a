"""The Frechet distance between two sets of feature vectors, each summarised by a Gaussian.

    d^2 = ||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr((C_1 C_2)^(1/2))

(Heusel et al. 2017). C_1 C_2 is similar to the symmetric C_1^(1/2) C_2 C_1^(1/2), whose
eigenvalues are real and >= 0, so the trace of the square root is the sum of the square roots
of those eigenvalues: two symmetric eigendecompositions (torch.linalg.eigh) in float64, no
general matrix square root. Tiny negative eigenvalues from round-off are clipped to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Gaussian:
    mean: Tensor  # (D,) float64
    cov: Tensor  # (D, D) float64, the unbiased sample covariance

    @classmethod
    def fit(cls, features: Tensor) -> Gaussian:
        f = features.to(torch.float64)
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"need at least two feature vectors (N, D), got {tuple(f.shape)}")
        mean = f.mean(dim=0)
        centred = f - mean
        return cls(mean, centred.t() @ centred / (f.shape[0] - 1))


def psd_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh((matrix + matrix.t()) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.t()


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    root = psd_sqrt(a.cov)
    middle = root @ b.cov @ root
    eig = torch.linalg.eigvalsh((middle + middle.t()) / 2).clamp_min(0)
    diff = a.mean - b.mean
    value = diff @ diff + a.cov.trace() + b.cov.trace() - 2 * eig.sqrt().sum()
    return max(float(value), 0.0)
