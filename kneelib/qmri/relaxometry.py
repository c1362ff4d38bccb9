"""T2 relaxometry of paper 001: the three-parameter mono-exponential fitted to every voxel at once.

Paper 001 (Morales et al.), Methods, "Relaxometry": the cartilage T2 relaxation time is computed
on the masked multi-echo spin-echo (MSME) echoes "using a three-parameter,
Levenberg-Marquardt mono-exponential", ``S(TE) = S0 exp(-TE / T2) + C``; Methods, "Bone surface
projection": the deep and superficial T2 are the averages over the bottom (next to the bone)
and top (next to the joint) halves of the cartilage, the total T2 over all of it.

The fit (:func:`fit_t2_monoexponential`) runs Levenberg-Marquardt on all voxels together in
numpy: the two linear parameters ``S0`` and ``C`` are eliminated by variable projection (exact
least-squares amplitudes for each rate), so the damped Gauss-Newton step is one division per
voxel; a per-voxel damping factor (decreased after an accepted step, increased after a rejected
one) and per-voxel stopping; every quantity of a step is a closed form in seven sums over the
echoes, computed for all voxels by three matrix products (see :func:`_levenberg_marquardt`). It
starts from the closed-form (signal-weighted) log-linear fit of ``log S = log S0 - TE / T2`` and
reaches the same least-squares minimum as a per-voxel :func:`scipy.optimize.curve_fit` (tested to
0.1 ms) over 200 times faster (``benchmarks/bench_qmri_t2.py``: 20,000 voxels, 8 echoes).

The module (about 600 lines) keeps the fit and the deep/superficial layer split together: the
layer T2 of paper 001 is defined on the fit's maps and mask, and both are one Methods paragraph.

The fit is parametrised internally by the rate ``R2 = 1 / T2`` (better conditioned) on the signal
divided by each voxel's largest echo; the least-squares minimum does not depend on either choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from kneelib.qmri import QmriInputError

__all__ = [
    "T2Fit",
    "LayerT2",
    "monoexponential",
    "log_linear_t2",
    "fit_t2_monoexponential",
    "cartilage_depth",
    "split_cartilage_layers",
    "layer_t2",
]

#: Levenberg-Marquardt damping limits (per voxel); above the upper one no step lowers the cost.
_LAMBDA_START, _LAMBDA_MIN, _LAMBDA_MAX = 1e-3, 1e-12, 1e16


def monoexponential(echo_times_ms: np.ndarray, s0, t2_ms, offset) -> np.ndarray:
    """The model of paper 001, Methods "Relaxometry": ``S(TE) = S0 exp(-TE / T2) + C``.

    Parameters broadcast against ``echo_times_ms`` (e.g. ``s0[..., None]`` for maps).
    """
    return s0 * np.exp(-np.asarray(echo_times_ms, dtype=float) / t2_ms) + offset


@dataclass(frozen=True)
class T2Fit:
    """Parameter maps of the three-parameter mono-exponential fit (paper 001, "Relaxometry").

    Attributes
    ----------
    s0 : ndarray
        Amplitude ``S0`` (signal units), NaN where not fitted (outside the mask, unusable signal).
    t2_ms : ndarray
        T2 in ms, NaN where not fitted.
    offset : ndarray
        Constant ``C`` (signal units; noise floor / slowly relaxing component), NaN where not fitted.
    converged : ndarray of bool
        Levenberg-Marquardt stopped on its tolerance (not the iteration limit) with finite
        parameters, ``S0 > 0`` and T2 inside ``t2_range_ms``. Use it as the QC mask.
    iterations : ndarray of int
        Levenberg-Marquardt iterations per voxel (0 where not fitted).
    residual_rms : ndarray
        Root-mean-square residual over the echoes (signal units), NaN where not fitted.
    """

    s0: np.ndarray
    t2_ms: np.ndarray
    offset: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    residual_rms: np.ndarray


def _check_inputs(signal, echo_times_ms, mask):
    signal = np.asarray(signal)
    if signal.ndim < 1:
        raise QmriInputError("the signal must have the echoes on its last axis; got a scalar", what="T2 fit")
    if not np.issubdtype(signal.dtype, np.number) or np.iscomplexobj(signal):
        raise QmriInputError(f"the signal must be real numbers, got dtype {signal.dtype}", what="T2 fit")
    te = np.asarray(echo_times_ms, dtype=float)
    if te.ndim != 1:
        raise QmriInputError(f"echo times must be a 1-D sequence, got shape {te.shape}", what="T2 fit")
    if te.size < 3:
        raise QmriInputError(f"the three-parameter model needs at least 3 echoes, got {te.size}", what="T2 fit")
    if signal.shape[-1] != te.size:
        raise QmriInputError(f"the signal has {signal.shape[-1]} echoes on its last axis (shape {signal.shape}) "
                             f"but {te.size} echo times were given", what="T2 fit")
    if not np.all(np.isfinite(te)) or np.any(te < 0):
        raise QmriInputError(f"echo times must be finite and >= 0 ms, got {te.tolist()}", what="T2 fit")
    if np.any(np.diff(te) <= 0):
        raise QmriInputError(f"echo times must increase strictly, got {te.tolist()}", what="T2 fit")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != signal.shape[:-1]:
            raise QmriInputError(f"mask shape {mask.shape} differs from the signal's voxel shape "
                                 f"{signal.shape[:-1]}", what="T2 fit")
        mask = mask.astype(bool)
    return signal, te, mask


def log_linear_t2(signal, echo_times_ms) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form start: signal-weighted least squares of ``log S = log S0 - TE / T2`` per voxel.

    Parameters
    ----------
    signal : ndarray, (..., n_echoes)
    echo_times_ms : sequence of float

    Returns
    -------
    s0, t2_ms : ndarray
        Shape ``signal.shape[:-1]``. Weights ``S^2`` (the usual correction for the
        logarithm's noise amplification at low signal); non-positive samples get weight 0.
        T2 is ``inf`` where the fitted slope is not negative.
    """
    y = np.asarray(signal, dtype=float)
    s0, t2 = _log_linear_rows(np.moveaxis(y, -1, 0).reshape(y.shape[-1], -1), np.asarray(echo_times_ms, dtype=float))
    return s0.reshape(y.shape[:-1]), t2.reshape(y.shape[:-1])


def _log_linear_rows(rows: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`log_linear_t2` on echoes laid out (E, m), one row per echo."""
    positive = rows > 0
    w = np.where(positive, rows * rows, 0.0)
    log_y = np.log(np.where(positive, rows, 1.0))
    log_y *= w
    # weighted sums over the echoes as products with the rows (1, TE, TE^2) (BLAS), centred by
    # the usual identities
    powers = np.stack([np.ones_like(te), te, te * te])
    sw, swt, swtt = powers @ w
    swl, swlt = powers[:2] @ log_y
    sw_safe = np.where(sw > 0, sw, 1.0)
    t_mean = swt / sw_safe
    l_mean = swl / sw_safe
    sxx = np.maximum(swtt - sw * t_mean * t_mean, 0.0)
    sxy = swlt - sw * t_mean * l_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 0, sxy / sxx, 0.0)
        t2 = np.where(slope < 0, -1.0 / slope, np.inf)
    s0 = np.exp(l_mean - slope * t_mean)
    return s0, t2


def _start_rate(rows: np.ndarray, te: np.ndarray, t2_low: float, t2_high: float) -> np.ndarray:
    """Closed-form start rate ``1 / T2`` for echoes (E, m): the log-linear T2 (:func:`log_linear_t2`),
    clipped into the plausible range (``S0`` and ``C`` follow from it in :func:`_levenberg_marquardt`)."""
    _, t2_start = _log_linear_rows(rows, te)
    return 1.0 / np.clip(np.nan_to_num(t2_start, nan=t2_high, posinf=t2_high), t2_low, t2_high)


def _decay_recurrence(te: np.ndarray) -> tuple[float | None, bool]:
    """``(step, first_is_step)``: the echo spacing when the echoes are equally spaced (then the
    decay of echo k+1 is that of echo k times ``exp(-R2 step)``; else None), and whether the
    first echo time equals it (``TE_k = k step``, the usual MSME layout: one exp per voxel)."""
    steps = np.diff(te)
    if not np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        return None, False
    return float(steps[0]), bool(np.isclose(te[0], steps[0], rtol=1e-9, atol=0.0))


#: rows of the per-voxel echo sums (:func:`_echo_sums`): sum e, sum TE e, sum e^2, sum TE e^2,
#: sum TE^2 e^2, sum y e, sum TE y e (e = exp(-R2 TE)); the TE-weighted ones feed the Jacobian
_A, _AT, _B, _BT, _BTT, _EY, _ETY = range(7)


def _first_decay(te: np.ndarray, rate: np.ndarray, recurrence, e: np.ndarray):
    """``e <- exp(-R2 TE_0)``; returns the per-echo ratio ``exp(-R2 step)`` (None without a recurrence)."""
    step, first_is_step = recurrence
    np.multiply(rate, -(te[0] if step is None or not first_is_step else step), out=e)
    np.exp(e, out=e)
    if step is None:
        return None
    return e if first_is_step else np.exp(-step * rate)


def _decays(te: np.ndarray, rate: np.ndarray, recurrence, out: np.ndarray) -> np.ndarray:
    """``out (E, m) <- exp(-R2 TE_k)``; equally spaced echoes by one multiplication per echo."""
    ratio = _first_decay(te, rate, recurrence, out[0])
    for k in range(1, te.size):
        if ratio is not None:
            np.multiply(out[k - 1], ratio, out=out[k])
        else:
            np.multiply(rate, -te[k], out=out[k])
            np.exp(out[k], out=out[k])
    return out


def _echo_sums(signal: np.ndarray, te: np.ndarray, rate: np.ndarray, recurrence, powers: np.ndarray,
               out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Per-voxel sums over the echoes of ``e = exp(-R2 TE)`` and the signal, at the rates ``rate`` (m,).

    ``signal`` is (E, m) (one row per echo); ``powers`` the rows ``(1, TE, TE^2)`` (3, E);
    ``out`` (7, m) receives the rows ``_A ... _ETY``, ``scratch`` is (3, E, m) and keeps the
    decays in ``scratch[0]``. The variable-projection step and the amplitudes are closed forms
    in these seven sums (and the constant sum of ``y``), taken as three products with the rows
    ``(1, TE, TE^2)`` (BLAS).
    """
    e, e2, ye = scratch
    _decays(te, rate, recurrence, e)
    np.multiply(e, e, out=e2)
    np.multiply(signal, e, out=ye)
    np.matmul(powers[:2], e, out=out[_A:_B])
    np.matmul(powers, e2, out=out[_B:_EY])
    np.matmul(powers[:2], ye, out=out[_EY:])
    return out


def _residual_sum_of_squares(signal: np.ndarray, te: np.ndarray, s0, rate, offset, recurrence) -> np.ndarray:
    """``sum_k (y_k - S0 exp(-R2 TE_k) - C)^2`` per voxel, from the residuals (``signal`` (E, m))."""
    residual = _decays(te, rate, recurrence, np.empty_like(signal, dtype=float))
    residual *= -s0
    residual += signal
    residual -= offset
    return np.einsum("em,em->m", residual, residual)


def _amplitudes_and_cost(sums: np.ndarray, signal: np.ndarray, signal_sum: np.ndarray, ones: np.ndarray,
                         scratch: np.ndarray):
    """Least-squares ``S0`` and ``C`` for the decays of the last :func:`_echo_sums` call (2 x 2
    normal equations in closed form) and the sum of squares of the residual they leave.

    The residual is formed explicitly (in ``scratch[2]``, the decays being ``scratch[0]``): the
    closed form ``sum y^2 - S0 sum y e - C sum y`` cancels to a few significant digits where the
    fit is good, too few to compare the trial steps of a flat (long-T2) valley.
    """
    n_echoes = signal.shape[0]
    a, b, ey = sums[_A], sums[_B], sums[_EY]
    det = n_echoes * b - a * a
    det = np.where(det > 0, det, np.inf)
    s0 = (n_echoes * ey - a * signal_sum) / det
    offset = (b * signal_sum - a * ey) / det
    decay, residual = scratch[0], scratch[2]
    np.multiply(decay, -s0, out=residual)
    residual += signal
    residual -= offset
    residual *= residual
    return s0, offset, ones @ residual


def _levenberg_marquardt(rows: np.ndarray, te: np.ndarray, rate: np.ndarray, max_iterations: int,
                         ftol: float, xtol: float, rate_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched LM on the echoes ``rows`` (E, n) from the rates ``rate`` (n,); returns p (n, 3) = (S0, R2, C),
    cost, converged, iterations.

    Levenberg-Marquardt on the rate ``R2 = 1/T2`` alone, with ``S0`` and ``C`` eliminated by
    variable projection (Golub & Pereyra 1973; Kaufman's Jacobian): for a given R2 they are
    the exact least-squares amplitudes (2 x 2 closed form), so the residual ``r`` is
    orthogonal to the columns ``e = exp(-R2 TE)`` and ``1``, and the Jacobian of the
    projected residual is ``v_perp``, ``v = S0 TE e`` minus its projection onto those
    columns. The damped Gauss-Newton step is ``-(v.r) / (|v_perp|^2 (1 + lambda))``
    (``v_perp.r = v.r`` since ``r`` is orthogonal to both columns), then S0 and C are re-solved
    for the new rate. The minimum is the plain three-parameter LM's (there the linear
    parameters are optimal for the rate); the one nonlinear parameter crosses the long,
    curved S0-C valley of slowly decaying voxels in a few steps. The step is accepted when
    it lowers the sum of squares and keeps ``R2 > 0`` (then ``lambda /= 10``), else rejected
    (``lambda *= 10``). A voxel stops when an accepted step lowers the cost by at most
    ``ftol`` relatively, a step is at most ``xtol`` relative to the parameters, or
    ``lambda`` exceeds 1e16 (no step lowers the cost: a minimum to machine precision), all
    counted as converged; or, not converged, when R2 falls below ``rate_floor`` (T2 runs off
    to infinity: the echoes are fitted better by a line than by any decay).

    Every quantity of a step (``v.r``, ``|v_perp|^2``, the amplitudes, the cost) is a closed
    form in seven per-voxel sums over the echoes (:func:`_echo_sums`), so an iteration is one
    pass over the echoes with vector operations on the active voxels; finished voxels leave the
    working set. The returned cost is recomputed from the residuals (the sums' form
    ``sum y^2 - S0 sum y e - C sum y`` is only used to compare trial steps).
    """
    n_echoes, n = rows.shape
    recurrence = _decay_recurrence(te)
    signal = rows  # (E, m): one row per echo, m the working set
    signal_sum = signal.sum(0)
    rate = rate.astype(float, copy=True)
    scratch = np.empty((3, n_echoes, n))
    powers = np.stack([np.ones_like(te), te, te * te])
    sums = _echo_sums(signal, te, rate, recurrence, powers, np.empty((7, n)), scratch)
    trial_sums = np.empty_like(sums)
    s0, offset, cost = _amplitudes_and_cost(sums, signal, signal_sum, powers[0], scratch)
    lam = np.full(n, _LAMBDA_START)
    p = np.empty((n, 3))
    converged = np.zeros(n, dtype=bool)
    iterations = np.zeros(n, dtype=np.int64)
    active = np.arange(n)  # voxel of each working column
    alive = np.ones(n, dtype=bool)  # working columns still iterating (finished ones ride along until compaction)
    for iteration in range(1, max_iterations + 1):
        a, b, at, bt, btt = sums[_A], sums[_B], sums[_AT], sums[_BT], sums[_BTT]
        # |v_perp|^2 / S0^2: sum TE^2 e^2 minus the projection of TE e onto span{e, 1}
        # (2 x 2 normal equations in closed form)
        det = n_echoes * b - a * a
        det = np.where(det > 0, det, np.inf)
        v_perp_sq = btt - (n_echoes * bt * bt - 2.0 * a * at * bt + b * at * at) / det
        # v.r / S0 = sum TE e (y - S0 e - C)
        v_dot_r = sums[_ETY] - s0 * bt - offset * at
        step = -s0 * v_dot_r / (np.maximum(s0 * s0 * v_perp_sq, 1e-300) * (1.0 + lam))
        trial_rate = rate + step
        _echo_sums(signal, te, trial_rate, recurrence, powers, trial_sums, scratch)
        trial_s0, trial_offset, trial_cost = _amplitudes_and_cost(trial_sums, signal, signal_sum, powers[0], scratch)
        accepted = (trial_cost < cost) & (trial_rate > 0)  # NaN compares False
        step_sq = (trial_s0 - s0) ** 2 + step * step + (trial_offset - offset) ** 2
        small_step = step_sq <= (xtol * (np.sqrt(s0 * s0 + rate * rate + offset * offset) + xtol)) ** 2
        small_decrease = cost - trial_cost <= ftol * np.abs(cost)
        np.copyto(s0, trial_s0, where=accepted)
        np.copyto(rate, trial_rate, where=accepted)
        np.copyto(offset, trial_offset, where=accepted)
        np.copyto(cost, trial_cost, where=accepted)
        np.copyto(sums, trial_sums, where=accepted)
        lam = np.where(accepted, np.maximum(lam * 0.1, _LAMBDA_MIN), lam * 10.0)
        settled = (accepted & (small_step | small_decrease)) | (~accepted & small_step) | (lam > _LAMBDA_MAX)
        escaped = rate < rate_floor  # T2 far beyond the plausible range: no finite minimum (linear data)
        done = (settled | escaped) & alive
        if done.any():
            finished = active[done]
            p[finished, 0], p[finished, 1], p[finished, 2] = s0[done], rate[done], offset[done]
            converged[finished] = settled[done] & ~escaped[done]
            iterations[finished] = iteration
            alive &= ~done
            n_alive = int(np.count_nonzero(alive))
            if n_alive == 0:
                break
            if n_alive <= alive.size // 2:  # compact the working set (a copy of every array: not every step)
                keep = np.flatnonzero(alive)
                active = active[keep]
                s0, rate, offset, cost, lam = s0[keep], rate[keep], offset[keep], cost[keep], lam[keep]
                signal_sum = signal_sum[keep]
                signal, sums = signal.take(keep, axis=1), sums.take(keep, axis=1)
                trial_sums, scratch = np.empty_like(sums), np.empty((3, n_echoes, keep.size))
                alive = np.ones(keep.size, dtype=bool)
    if alive.any():  # iteration limit: keep the last parameters, not converged
        p[active[alive], 0], p[active[alive], 1], p[active[alive], 2] = s0[alive], rate[alive], offset[alive]
        iterations[active[alive]] = max_iterations
    with np.errstate(all="ignore"):
        cost = _residual_sum_of_squares(rows, te, p[:, 0], p[:, 1], p[:, 2], recurrence)
    return p, cost, converged, iterations


def fit_t2_monoexponential(
    signal: np.ndarray,
    echo_times_ms: Sequence[float],
    *,
    mask: np.ndarray | None = None,
    t2_range_ms: tuple[float, float] = (0.5, 1000.0),
    max_iterations: int = 200,
    ftol: float = 1e-10,
    xtol: float = 1e-8,
    chunk_voxels: int = 200_000,
) -> T2Fit:
    """Fit ``S(TE) = S0 exp(-TE / T2) + C`` to every voxel at once (paper 001, Methods "Relaxometry").

    Levenberg-Marquardt, vectorised over voxels (on the rate ``1 / T2``, with ``S0`` and ``C``
    solved exactly for each rate: variable projection; a damping factor per voxel), started
    from the closed-form log-linear fit (:func:`log_linear_t2`).

    Parameters
    ----------
    signal : ndarray, (..., n_echoes)
        Echo images with the echoes on the last axis (the layout of a 4-D
        :class:`kneelib.data.dicom.Volume`), or ``(n_voxels, n_echoes)``.
    echo_times_ms : sequence of float
        Strictly increasing echo times (ms), at least three (three parameters).
    mask : ndarray of bool, optional
        ``signal.shape[:-1]``; only these voxels are fitted (e.g. the cartilage mask).
    t2_range_ms : (float, float)
        Plausible T2 range; the start is clipped into it and fits ending outside it are
        flagged as not converged.
    max_iterations : int
        Levenberg-Marquardt iterations per voxel before giving up (``converged`` False).
    ftol, xtol : float
        Stop when an accepted step lowers the sum of squares by at most ``ftol`` relatively,
        or the step is at most ``xtol`` relative to the parameter vector (normalised units);
        stricter than ``curve_fit``'s defaults (1.5e-8 both).
    chunk_voxels : int
        Voxels per batch (bounds memory: about 5 floats per echo and 40 per voxel).

    Returns
    -------
    T2Fit
        Maps of ``S0``, ``T2`` (ms), ``C``, the convergence mask, iterations and residual RMS.

    Raises
    ------
    QmriInputError
        Fewer than 3 echoes, echo times not strictly increasing (or negative), the echo axis
        not matching the echo times, a mask of another shape, or non-real signal.

    Notes
    -----
    Voxels whose echoes are not all finite or whose largest echo is not positive are not
    fitted (NaN, not converged). Each voxel is divided by its largest echo before fitting, so
    the tolerances do not depend on the signal scale.
    """
    signal, te, mask = _check_inputs(signal, echo_times_ms, mask)
    t2_low, t2_high = float(t2_range_ms[0]), float(t2_range_ms[1])
    if not 0 < t2_low < t2_high:
        raise QmriInputError(f"t2_range_ms must be 0 < low < high, got {t2_range_ms}", what="T2 fit")
    voxel_shape = signal.shape[:-1]
    flat = signal.reshape(-1, te.size)
    selected = np.ones(flat.shape[0], dtype=bool) if mask is None else mask.reshape(-1).copy()
    index = np.flatnonzero(selected)

    out = {name: np.full(flat.shape[0], np.nan) for name in ("s0", "t2_ms", "offset", "residual_rms")}
    converged = np.zeros(flat.shape[0], dtype=bool)
    iterations = np.zeros(flat.shape[0], dtype=np.int64)
    batch = max(int(chunk_voxels), 1)

    def fit_batch(chunk: np.ndarray) -> None:
        rows = np.ascontiguousarray(flat[chunk].T, dtype=float)  # (E, m): one row per echo
        scale = rows.max(0)
        usable = np.isfinite(rows).all(0) & (scale > 0)
        if not usable.all():
            chunk, rows, scale = chunk[usable], np.ascontiguousarray(rows[:, usable]), scale[usable]
        if chunk.size == 0:
            return
        rows /= scale
        with np.errstate(all="ignore"):
            rate = _start_rate(rows, te, t2_low, t2_high)
        with np.errstate(all="ignore"):  # wild trial steps overflow; they are rejected, not used
            p, cost, ok, n_iter = _levenberg_marquardt(rows, te, rate, max_iterations, ftol, xtol, 0.5 / t2_high)
        with np.errstate(divide="ignore"):
            t2 = 1.0 / p[:, 1]
        ok &= np.all(np.isfinite(p), axis=1) & (p[:, 0] > 0) & (t2 >= t2_low) & (t2 <= t2_high)
        out["s0"][chunk] = p[:, 0] * scale
        out["t2_ms"][chunk] = t2
        out["offset"][chunk] = p[:, 2] * scale
        out["residual_rms"][chunk] = np.sqrt(cost / te.size) * scale
        converged[chunk] = ok
        iterations[chunk] = n_iter

    for start in range(0, index.size, batch):
        fit_batch(index[start:start + batch])
    return T2Fit(**{k: v.reshape(voxel_shape) for k, v in out.items()},
                 converged=converged.reshape(voxel_shape), iterations=iterations.reshape(voxel_shape))


# ------------------------------------------------------------------------------------------
# Deep / superficial layers (paper 001, Methods "Bone surface projection")
# ------------------------------------------------------------------------------------------

def _check_masks(cartilage_mask, bone_mask, spacing_mm, slice_axis):
    cartilage = np.asarray(cartilage_mask).astype(bool)
    bone = np.asarray(bone_mask).astype(bool)
    if cartilage.shape != bone.shape:
        raise QmriInputError(f"cartilage mask shape {cartilage.shape} differs from bone mask shape {bone.shape}",
                             what="cartilage layers")
    spacing = np.asarray(spacing_mm, dtype=float).reshape(-1)
    if spacing.size != cartilage.ndim or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise QmriInputError(f"spacing_mm needs {cartilage.ndim} positive values, got {spacing_mm}",
                             what="cartilage layers")
    if slice_axis is not None and not -cartilage.ndim <= slice_axis < cartilage.ndim:
        raise QmriInputError(f"slice_axis {slice_axis} outside the {cartilage.ndim} axes", what="cartilage layers")
    if np.any(cartilage & bone):
        raise QmriInputError("cartilage and bone masks overlap", what="cartilage layers")
    if cartilage.any() and not bone.any():
        raise QmriInputError("the bone mask is empty: the deep layer is defined from the bone surface",
                             what="cartilage layers")
    return cartilage, bone, spacing


def _distance_at(nonzero: np.ndarray, where: np.ndarray, sampling, margin_voxels: int = 12) -> np.ndarray:
    """``ndimage.distance_transform_edt(nonzero, sampling)[where]``, transformed on a box around ``where``.

    The box is the bounding box of ``where`` widened by ``margin_voxels`` per side. The result
    is exact: a voxel whose distance within the box is at most ``margin_voxels`` times the
    smallest spacing has its nearest zero voxel inside the box (no coordinate differs by more
    than the margin); when some distance exceeds that, or the box holds no zero voxel, the
    whole array is transformed. Cartilage plates fill a small part of a knee volume, so this
    is several times faster for :func:`cartilage_depth`.
    """
    coords = np.nonzero(where)
    box = tuple(slice(max(int(c.min()) - margin_voxels, 0), min(int(c.max()) + margin_voxels + 1, n))
                for c, n in zip(coords, where.shape))
    inside = nonzero[box]
    if not inside.all():
        distance = ndimage.distance_transform_edt(inside, sampling=sampling)[where[box]]
        if distance.max() <= margin_voxels * float(np.min(sampling)):
            return distance
    return ndimage.distance_transform_edt(nonzero, sampling=sampling)[where]


def cartilage_depth(cartilage_mask: np.ndarray, bone_mask: np.ndarray, spacing_mm: Sequence[float], *,
                    slice_axis: int | None = None) -> np.ndarray:
    """Normalised depth of each cartilage voxel: 0 next to the bone, 1 next to the joint.

    ``depth = d_bone / (d_bone + d_joint)``, with ``d_bone`` the Euclidean distance (mm, with the
    voxel spacing) to the nearest bone voxel and ``d_joint`` the distance to the nearest voxel
    that is neither cartilage nor bone (the articular side: joint space, fluid, meniscus).
    For a cartilage ``n`` voxels thick along the normal, voxel ``i`` (1 next to the bone) has
    depth ``i / (n + 1)``.

    Parameters
    ----------
    cartilage_mask, bone_mask : ndarray of bool
        Same shape; the bone the cartilage covers (e.g. femur for femoral cartilage).
    spacing_mm : sequence of float
        Voxel size per axis.
    slice_axis : int, optional
        Measure distances within each slice along this axis (2-D, as for 2-D MSME slices);
        default: in 3-D.

    Returns
    -------
    ndarray of float
        Depth in ``[0, 1]`` inside the cartilage, NaN elsewhere.

    Raises
    ------
    QmriInputError
        Shapes differ, masks overlap, empty bone with cartilage present, bad spacing.
    """
    cartilage, bone, spacing = _check_masks(cartilage_mask, bone_mask, spacing_mm, slice_axis)
    depth = np.full(cartilage.shape, np.nan)
    if not cartilage.any():
        return depth
    if slice_axis is None:
        pieces = [(tuple(slice(None) for _ in range(cartilage.ndim)), spacing)]
    else:
        axis = slice_axis % cartilage.ndim
        in_plane = np.delete(spacing, axis)
        pieces = []
        for k in range(cartilage.shape[axis]):
            index = [slice(None)] * cartilage.ndim
            index[axis] = k
            pieces.append((tuple(index), in_plane))
    for index, sampling in pieces:
        cart, bn = cartilage[index], bone[index]
        if not cart.any():
            continue
        if not bn.any():  # a 2-D slice with cartilage but no bone: depth undefined there
            continue
        d_bone = _distance_at(~bn, cart, sampling)  # to the nearest bone voxel
        d_joint = _distance_at(cart | bn, cart, sampling)  # to the nearest voxel that is neither
        local = np.full(cart.shape, np.nan)
        local[cart] = d_bone / (d_bone + d_joint)
        depth[index] = local
    return depth


def split_cartilage_layers(cartilage_mask: np.ndarray, bone_mask: np.ndarray, spacing_mm: Sequence[float], *,
                           slice_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deep (bottom, next to the bone) and superficial (top, next to the joint) halves of a cartilage.

    Paper 001, Methods "Bone surface projection": "the superficial and deep subdivisions of the
    cartilage used for the T2 averaging were defined as the respective top and bottom halves of
    the cartilage". Deep = normalised depth (:func:`cartilage_depth`) ``<= 0.5`` (the middle
    voxel of an odd count goes to the deep half), superficial = ``> 0.5``.

    Returns
    -------
    deep, superficial : ndarray of bool
        Disjoint; their union is the cartilage (voxels of a slice without bone, with
        ``slice_axis``, are in neither).
    """
    depth = cartilage_depth(cartilage_mask, bone_mask, spacing_mm, slice_axis=slice_axis)
    finite = np.isfinite(depth)
    return finite & (np.nan_to_num(depth, nan=1.0) <= 0.5), finite & (np.nan_to_num(depth, nan=0.0) > 0.5)


@dataclass(frozen=True)
class LayerT2:
    """Deep, superficial and total T2 of one cartilage (ms) and the voxel counts behind them."""

    deep_ms: float
    superficial_ms: float
    total_ms: float
    n_deep: int
    n_superficial: int
    n_total: int


def layer_t2(t2_ms: np.ndarray, cartilage_mask: np.ndarray, depth: np.ndarray, *,
             valid: np.ndarray | None = None, statistic: str = "mean") -> LayerT2:
    """Deep, superficial and total T2 of one cartilage from a T2 map and a depth map.

    Paper 001, Methods "Relaxometry" and "Bone surface projection" (averages over the bottom
    half, the top half and all of the cartilage).

    Parameters
    ----------
    t2_ms : ndarray
        T2 map (e.g. :attr:`T2Fit.t2_ms`).
    cartilage_mask : ndarray of bool
        Same shape.
    depth : ndarray
        Normalised depth (:func:`cartilage_depth`): deep ``<= 0.5``, superficial ``> 0.5``.
    valid : ndarray of bool, optional
        Voxels to use (e.g. :attr:`T2Fit.converged`); default: finite T2.
    statistic : {"mean", "median"}
        The paper averages (mean); the median resists the odd failed voxel.

    Returns
    -------
    LayerT2
        NaN for an empty layer.

    Raises
    ------
    QmriInputError
        Shapes differ or an unknown statistic.
    """
    t2 = np.asarray(t2_ms, dtype=float)
    cartilage = np.asarray(cartilage_mask).astype(bool)
    depth = np.asarray(depth, dtype=float)
    shapes = {"t2_ms": t2.shape, "cartilage_mask": cartilage.shape, "depth": depth.shape}
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        shapes["valid"] = valid.shape
    if len(set(shapes.values())) != 1:
        raise QmriInputError(f"shapes differ: {shapes}", what="layer T2")
    if statistic not in ("mean", "median"):
        raise QmriInputError(f"statistic must be 'mean' or 'median', got {statistic!r}", what="layer T2")
    use = cartilage & np.isfinite(t2) & np.isfinite(depth)
    if valid is not None:
        use &= valid
    reduce = np.mean if statistic == "mean" else np.median
    layers = {"deep": use & (depth <= 0.5), "superficial": use & (depth > 0.5), "total": use}
    values = {k: float(reduce(t2[m])) if m.any() else float("nan") for k, m in layers.items()}
    return LayerT2(deep_ms=values["deep"], superficial_ms=values["superficial"], total_ms=values["total"],
                   n_deep=int(layers["deep"].sum()), n_superficial=int(layers["superficial"].sum()),
                   n_total=int(layers["total"].sum()))
