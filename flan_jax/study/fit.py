"""Scaling-law fits L(x) = a * x^(-b) + c (Kaplan et al. 2020; Hoffmann et al. 2022's
per-axis form) of eval loss against parameters N, tokens D or compute C.

The irreducible term c is what makes the fit nonlinear: with it fixed, log(L - c) is a line
in log x. So the fit starts from the best line over a grid of c below min(L), then refines
all three at once (scipy's trust-region least squares, in log a for conditioning), and
reports standard errors from the Jacobian at the optimum.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(x) = a * x^(-b) + c with the standard errors of a, b and c, and the fit's root mean
    squared relative residual (0.01: the points sit within ~1% of the curve)."""

    a: float
    b: float
    c: float
    a_err: float
    b_err: float
    c_err: float
    rel_rmse: float
    points: int

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(x, -self.b) + self.c

    def describe(self, name: str = "x") -> str:
        return (f"L({name}) = {self.a:.3g}·{name}^(-{self.b:.3f} ± {self.b_err:.3f}) + "
                f"{self.c:.3f} ± {self.c_err:.3f}  (rel. RMSE {self.rel_rmse:.2%}, "
                f"{self.points} points)")


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """The least-squares (relative residuals) fit of `y` = a * `x`^(-b) + c, a, b > 0 and
    0 <= c < min(y). Needs >= 4 points (3 parameters and one degree of freedom)."""
    from scipy.optimize import least_squares

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit_power_law: x {x.shape} and y {y.shape} must be equal 1-d")
    if len(x) < 4:
        raise ValueError(f"fit_power_law: {len(x)} points; a, b and c need at least 4")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and x.min() > 0
            and y.min() > 0):
        raise ValueError("fit_power_law: x and y must be finite and > 0")
    if len(np.unique(x)) < 3:
        raise ValueError("fit_power_law: needs at least 3 distinct x")
    lx = np.log(x)

    def line(c: float) -> tuple[float, float, float, float]:  # (residual, log a, b, c)
        slope, intercept = np.polyfit(lx, np.log(y - c), 1)
        pred = np.exp(intercept + slope * lx) + c
        return float(np.sum(((pred - y) / y) ** 2)), float(intercept), float(-slope), c

    _, log_a, b, c0 = min((line(c) for c in y.min() * np.linspace(0.0, 0.99, 100)),
                          key=lambda t: t[0])

    def residuals(p: np.ndarray) -> np.ndarray:
        return (np.exp(p[0] - p[1] * lx) + p[2] - y) / y

    lo, hi = [-np.inf, 1e-6, 0.0], [np.inf, 10.0, y.min() * (1 - 1e-9)]
    start = np.clip([log_a, max(b, 1e-3), c0], np.add(lo, 1e-9), np.subtract(hi, 1e-9))
    fit = least_squares(residuals, start, bounds=(lo, hi), x_scale="jac", xtol=1e-14,
                        ftol=1e-14, gtol=1e-14)
    log_a, b, c = fit.x
    dof = len(x) - 3
    sigma2 = float(np.sum(fit.fun ** 2)) / dof
    try:
        cov = np.linalg.inv(fit.jac.T @ fit.jac) * sigma2
        errs = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        errs = np.full(3, math.inf)
    a = math.exp(log_a)
    return PowerLaw(a=a, b=float(b), c=float(c), a_err=float(a * errs[0]),
                    b_err=float(errs[1]), c_err=float(errs[2]),
                    rel_rmse=float(np.sqrt(np.mean(fit.fun ** 2))), points=len(x))
