"""Averaging profiles and their least-squares reconstruction (post-hoc EMA).

Karras et al. (2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, §3 and App. C): a power-function EMA with exponent
γ weighs the iterates θ_1..θ_t by ∝ τ^γ. Tracking two of them and saving
snapshots lets one rebuild, after training, the average of any other profile
as a combination of the snapshots whose coefficients sum to 1. An average is
linear in the iterates, so each one is a *profile*: the vector p of weights it
puts on θ_0, θ_1, ..., θ_t (optimizer steps, counted from 1; θ_0 = the
initial weights). The profiles here are those of the discrete recursions the
callbacks run, so the inner products are exact sums over the steps, no
closed form needed.

- Power function (`PowerFunctionEMA`): x_0 = θ_0, then after step t
  x_t = β_t x_{t-1} + (1 - β_t) θ_t with β_t = (1 - 1/t)^(γ+1). Unrolled, θ_s
  (1 <= s <= t) gets exactly (s^(γ+1) - (s-1)^(γ+1)) / t^(γ+1): the weights
  telescope to 1 and approach (γ+1) s^γ / t^(γ+1).
- Relative width: σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))) (EDM2 Eq. 3's
  standard deviation over the mean of the continuous profile); σ_rel 0.05 ->
  γ 16.97, 0.10 -> γ 6.94.
- The paper's EMA (`MultiEMA`): x_0 = θ_0, an update after every `every_steps`
  steps with decay a_k of callbacks/warmup.py (warm-up min(α, (t+1)/(t+10)),
  paper §4.1).

Plain NumPy, no Keras: `app.posthoc` plans a reconstruction (and refuses a
bad one) before it loads anything heavy.
"""

import numpy as np

from callbacks import arguments
from callbacks import warmup as warmup_rule


def sigma_rel_to_gamma(sigma_rel):
    """The exponent γ of the power function of relative width `sigma_rel`.

    (γ+1) / ((γ+2)² (γ+3)) = σ² is the cubic
    γ³ + 7γ² + (16 - 1/σ²) γ + (12 - 1/σ²) = 0; its largest real root.
    """
    sigma_rel = float(sigma_rel)
    if not 0 < sigma_rel < gamma_to_sigma_rel(0.0):
        raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}); got {sigma_rel}")
    inverse = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


def checked_sigma_rels(sigma_rels, distinct=True):
    """`sigma_rels` as a tuple of floats, each in (0, σ_rel of γ = 0, the uniform average)."""
    sigma_rels = tuple(sigma_rels) if isinstance(sigma_rels, (list, tuple)) else (sigma_rels,)
    limit = gamma_to_sigma_rel(0.0)
    if (not sigma_rels or (distinct and len(set(sigma_rels)) != len(sigma_rels)) or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < limit for s in sigma_rels)):
        kind = "distinct values" if distinct else "values"
        raise arguments.invalid("sigma_rels", sigma_rels, f"{kind} in (0, {limit:.4f})")
    return tuple(float(s) for s in sigma_rels)


def gamma_to_sigma_rel(gamma):
    """The relative width of the power function with exponent `gamma` (>= 0 here)."""
    gamma = float(gamma)
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def power_betas(gammas, step):
    """β_t = (1 - 1/t)^(γ+1) (float64) of the update after optimizer step `step` (>= 1)."""
    gammas = np.asarray(gammas, dtype="float64")
    return (1.0 - 1.0 / step) ** (gammas + 1.0)


def power_profile(gamma, step, length=None):
    """The weights the power-function EMA of `gamma`, read after step `step`, puts on θ_0..θ_{length-1}.

    `length` defaults to `step + 1`; entries past `step` are 0.
    """
    length = step + 1 if length is None else length
    profile = np.zeros(length)
    s = np.arange(1, step + 1, dtype="float64")
    # In ratios (s/t)^(γ+1): no overflow for large t or γ.
    profile[1:step + 1] = (s / step) ** (gamma + 1) - ((s - 1) / step) ** (gamma + 1)
    return profile


def ema_profile(decay, step, every_steps=1, warmup="steps", batch_scale=1.0, length=None):
    """The weights `MultiEMA`'s average of `decay`, read after step `step`, puts on θ_0..θ_{length-1}."""
    length = step + 1 if length is None else length
    warmup = warmup_rule.checked_warmup(warmup)
    update_steps = np.arange(every_steps, step + 1, every_steps)
    decays = np.array([
        warmup_rule.decays_at((decay,), warmup, int(s), every_steps, num_updates=k, batch_scale=batch_scale)[0]
        for k, s in enumerate(update_steps)
    ])
    # Update k keeps a_k of everything before it and adds (1 - a_k) θ_{s_k}:
    # θ_{s_k} ends with (1 - a_k) Π_{j>k} a_j and θ_0 with Π_j a_j.
    later = np.append(np.cumprod(decays[::-1])[::-1][1:], 1.0) if len(decays) else np.ones(0)
    profile = np.zeros(length)
    profile[0] = np.prod(decays)
    profile[update_steps] = (1.0 - decays) * later
    return profile


class Reconstruction:
    """The combination of snapshots, coefficients summing to 1, closest to a target profile.

    Attributes:
        coefficients: x, one per snapshot used (float64); Σ x_i = 1.
        snapshots: indices (into the snapshot list given) of the snapshots used.
        residual: ||Σ x_i p_i - p_r|| / ||p_r||, the relative L2 error of the profile.
        amplification: Σ |x_i|, the factor by which the snapshots' own rounding
            errors can grow in the combination.
    """

    def __init__(self, coefficients, snapshots, residual):
        self.coefficients = coefficients
        self.snapshots = snapshots
        self.residual = float(residual)
        self.amplification = float(np.abs(coefficients).sum()) if len(coefficients) else 0.0


def reconstruct(snapshot_profiles, target, resolution=1):
    """Minimizes ||Σ x_i p_i - p_r|| subject to Σ x_i = 1 (EDM2 App. C.3).

    Every profile here sums to 1 (an average), and EDM2 normalizes its
    profiles so; the constraint makes the combination an average too. Without
    it the least-squares x sums to 1 only up to about the profile residual, and
    whatever all the snapshots share (the bulk of the weights, θ_0's scale) is
    rebuilt times Σ x_i: a constant trajectory c would come back as (Σ x_i) c.

    Args:
        snapshot_profiles: list of profiles p_i (1-D arrays, any lengths;
            entries beyond an array's end are 0).
        target: the target profile p_r; only snapshots no longer than it
            (taken no later than the target's step) are used.
        resolution: compare profiles in blocks of this many steps, counted
            back from the target's step. The paper's EMA with a period T > 1 weighs
            only every T-th iterate: step by step its profile is a comb no
            smooth profile matches (relative residual ~ sqrt(1 - 1/T) however
            good the fit), while the iterates within one period differ by a
            few SGD steps. Pass T for such a target. Defaults to 1.

    Returns:
        A `Reconstruction`.
    """
    target = np.asarray(target, dtype="float64")
    used = [i for i, p in enumerate(snapshot_profiles) if len(p) <= len(target)]
    if not used:
        return Reconstruction(np.zeros(0), [], 1.0)
    basis = np.zeros((len(used), len(target)))
    for row, i in enumerate(used):
        profile = np.asarray(snapshot_profiles[i], dtype="float64")
        basis[row, :len(profile)] = profile
    basis, target = _blocks(basis, resolution), _blocks(target, resolution)
    # Null-space method: x = 1/n + N z, N an orthonormal basis of {Σ x_i = 0}, then
    # an unconstrained least squares in z, solved from the profiles themselves
    # (SVD): forming EDM2's normal equations A x = b, A_ij = <p_i, p_j>, squares
    # the condition number, and snapshots close in time make it large. lstsq's
    # cut-off drops the directions the snapshots cannot tell apart instead of
    # amplifying them; N orthonormal and orthogonal to 1/n, so its minimum-norm z
    # gives the minimum-norm x among the best.
    count = len(used)
    uniform = np.full(count, 1.0 / count)
    null_space = _sum_zero_basis(count)
    shift = np.linalg.lstsq(basis.T @ null_space, target - basis.T @ uniform, rcond=None)[0]
    coefficients = uniform + null_space @ shift
    error = basis.T @ coefficients - target
    residual = np.linalg.norm(error) / np.linalg.norm(target)
    return Reconstruction(coefficients, used, residual)


def _sum_zero_basis(count):
    """An orthonormal basis (count x count-1) of the vectors whose entries sum to 0: the
    columns 2.. of the Householder reflection H = I - 2 v v^T / v^T v, v = u + e_1,
    u = (1, ..., 1)/sqrt(count), which maps e_1 to -u (v_1 > 0: no cancellation)."""
    v = np.full(count, 1.0 / np.sqrt(count))
    v[0] += 1.0
    return np.eye(count)[:, 1:] - np.outer(v, v[1:]) * (2.0 / (v @ v))


def _blocks(profiles, resolution):
    """Sums of `profiles` (last axis: θ_0..θ_t) over blocks of `resolution` steps counted back
    from θ_t: (t-r, t], (t-2r, t-r], ... Any r consecutive steps hold exactly one update of a
    period-r EMA, which stands for the iterates of its block."""
    if resolution == 1:
        return profiles
    backwards = profiles[..., ::-1]
    padding = -backwards.shape[-1] % resolution
    padded = np.concatenate([backwards, np.zeros(backwards.shape[:-1] + (padding,))], axis=-1)
    return padded.reshape(padded.shape[:-1] + (-1, resolution)).sum(-1)
