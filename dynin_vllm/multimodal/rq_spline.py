"""Monotonic rational-quadratic spline with linear tails (Durkan et al., 2019).

The transform behind VITS's ``ConvFlow`` (stochastic duration predictor). Same
constants as upstream: minimum bin width/height/derivative 1e-3, identity
outside ``[-tail_bound, tail_bound]``, boundary derivatives fixed to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def _bin_index(
    knots: torch.Tensor, inputs: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    # Count the knots at or below each input; the last knot is nudged up by eps
    # so that an input equal to the right edge lands in the last bin.
    knots = knots.clone()
    knots[..., -1] += eps
    return torch.sum(inputs[..., None] >= knots, dim=-1) - 1


def _knots(
    unnormalized: torch.Tensor, low: float, high: float, min_size: float
) -> torch.Tensor:
    num_bins = unnormalized.shape[-1]
    sizes = F.softmax(unnormalized, dim=-1)
    sizes = min_size + (1 - min_size * num_bins) * sizes
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), mode="constant", value=0.0)
    knots = (high - low) * knots + low
    knots[..., 0] = low
    knots[..., -1] = high
    return knots


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    *,
    inverse: bool,
    tail_bound: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the spline (or its inverse) elementwise.

    ``inputs``: ``[...]``; widths/heights: ``[..., K]``; derivatives: ``[..., K - 1]``
    (inner knots). Returns ``(outputs, log|det|)`` of the applied direction.
    """
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    outputs = inputs.clone()
    logabsdet = torch.zeros_like(inputs)
    if not bool(inside.any()):
        return outputs, logabsdet
    boundary = math.log(math.exp(1 - MIN_DERIVATIVE) - 1)
    derivs = F.pad(unnormalized_derivatives, (1, 1), value=boundary)
    out_in, logdet_in = _spline_inside(
        inputs[inside],
        unnormalized_widths[inside],
        unnormalized_heights[inside],
        derivs[inside],
        inverse=inverse,
        bound=tail_bound,
    )
    outputs[inside] = out_in
    logabsdet[inside] = logdet_in
    return outputs, logabsdet


def _spline_inside(
    x: torch.Tensor,
    u_widths: torch.Tensor,
    u_heights: torch.Tensor,
    u_derivs: torch.Tensor,
    *,
    inverse: bool,
    bound: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    cum_w = _knots(u_widths, -bound, bound, MIN_BIN_WIDTH)
    cum_h = _knots(u_heights, -bound, bound, MIN_BIN_HEIGHT)
    widths = cum_w[..., 1:] - cum_w[..., :-1]
    heights = cum_h[..., 1:] - cum_h[..., :-1]
    derivs = MIN_DERIVATIVE + F.softplus(u_derivs)

    idx = _bin_index(cum_h if inverse else cum_w, x)[..., None]

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, idx)[..., 0]

    x0, w = pick(cum_w), pick(widths)
    y0, h = pick(cum_h), pick(heights)
    delta = pick(heights / widths)
    d0, d1 = pick(derivs), pick(derivs[..., 1:])
    slope_sum = d0 + d1 - 2 * delta

    if inverse:
        dy = x - y0
        a = dy * slope_sum + h * (delta - d0)
        b = h * d0 - dy * slope_sum
        c = -delta * dy
        disc = b.pow(2) - 4 * a * c
        theta = (2 * c) / (-b - torch.sqrt(disc))
        outputs = theta * w + x0
    else:
        theta = (x - x0) / w
    t1t = theta * (1 - theta)
    denominator = delta + slope_sum * t1t
    numerator_deriv = delta.pow(2) * (
        d1 * theta.pow(2) + 2 * delta * t1t + d0 * (1 - theta).pow(2)
    )
    logabsdet = torch.log(numerator_deriv) - 2 * torch.log(denominator)
    if inverse:
        return outputs, -logabsdet
    outputs = y0 + h * (delta * theta.pow(2) + d0 * t1t) / denominator
    return outputs, logabsdet
