"""The contributing (pixel, Gaussian) pairs of the pure-PyTorch rasterizer, found without gradients.

Candidates come from each Gaussian's own pixels: its gsplat tile box cut down to an ellipse that provably
holds every pixel where its alpha can reach 1/255. Gaussians are visited front to back in chunks, and pixels
whose transmittance ran out are skipped by later chunks, exactly where gsplat's kernel stops. The alpha
helpers and the segmented cumulative sum are shared with the compositing in :mod:`.rasterize`.
"""

from __future__ import annotations

import math

import torch

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
MAX_ALPHA = 0.999


@torch.no_grad()
def _tile_boxes(means2d, radii, width, height, tile_size):
    """Pixel box [x0, x1) x [y0, y1) covered by the tiles gsplat's isect_tiles lists a Gaussian in.

    Same arithmetic as gsplat (tiles floor((m - r) / ts) .. ceil((m + r) / ts) - 1, clamped to the grid), clipped
    to the image: a pixel only ever sees the Gaussians listed for its tile.
    """
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    center = means2d / tile_size
    r = radii.float() / tile_size
    x0 = torch.floor(center[:, 0] - r[:, 0]).clamp(0, tiles_x).long() * tile_size
    y0 = torch.floor(center[:, 1] - r[:, 1]).clamp(0, tiles_y).long() * tile_size
    x1 = (torch.ceil(center[:, 0] + r[:, 0]).clamp(0, tiles_x).long() * tile_size).clamp(max=width)
    y1 = (torch.ceil(center[:, 1] + r[:, 1]).clamp(0, tiles_y).long() * tile_size).clamp(max=height)
    return x0, x1, y0, y1


@torch.no_grad()
def _alpha_ellipses(means2d, conics, opacities):
    """Per Gaussian a level Q such that every pixel where ``_alpha`` (in floating point) reaches 1/255 lies in the
    ellipse q(d) = (a dx^2 + c dy^2) / 2 + b dx dy <= Q of the exact quadratic form of its stored conic.

    Returns float64 (a, b, c, det, Q, ok); where ``ok`` is False no such bound is certain and the caller searches
    the whole tile box. Rounding analysis, with eps that of the dtype ``_alpha`` computes in: d = m - p is one
    rounding away from exact, each of the terms t1 = a dx^2 / 2, t2 = c dy^2 / 2, t3 = b dx dy takes at most six
    roundings, so |sigma_fl - q| <= 8 eps (t1 + t2 + |t3|). With S = t1 + t2 and rho = |b| / sqrt(ac) < 1,
    |t3| <= rho S and q >= (1 - rho) S, hence sigma_fl >= q (1 - 16 eps / (1 - rho)). And alpha_fl >= fl(1/255)
    needs sigma_fl <= ln(255 o) + 5 eps (exp within 1 ulp, two roundings, the threshold rounded). Q doubles both
    margins and adds a relative and absolute 1e-6 for the float64 arithmetic that follows.
    """
    dtype = torch.promote_types(torch.promote_types(means2d.dtype, conics.dtype), opacities.dtype)
    eps = torch.finfo(dtype).eps
    a, b, c = conics.double().unbind(-1)
    det = a * c - b * b
    rho = b.abs() / (a * c).clamp(min=1e-300).sqrt()
    shrink = 32.0 * eps / (1.0 - rho).clamp(min=1e-300)
    level = torch.log(opacities.double() / ALPHA_THRESHOLD).clamp(min=0.0) + 16.0 * eps
    Q = level / (1.0 - shrink) * (1.0 + 1e-6) + 1e-6
    ok = (a > 0) & (c > 0) & (det > 0) & (shrink < 0.5) & torch.isfinite(Q) & torch.isfinite(det)
    ok &= torch.isfinite(means2d.double()).all(-1)
    return a, b, c, det, Q, ok


@torch.no_grad()
def _contributing_pairs(means2d, conics, opacities, radii, depths, width, height, tile_size,
                        budget: int | None = None):
    """All (pixel, Gaussian) pairs that gsplat's forward pass blends, sorted by pixel, then front to back, with
    their alphas and the transmittance before each.

    gsplat: a pixel walks the Gaussians listed for its tile (depth order, ties by Gaussian index), skips those
    with sigma < 0 or alpha < 1/255 and stops before the one that would bring its transmittance to <= 1e-4.

    Here candidates come per Gaussian, row by row, from the intersection of its tile box and an ellipse that
    provably holds every pixel where its alpha reaches 1/255 (``_alpha_ellipses``): no pair is missed, none is
    added. Their alphas are evaluated exactly as ``_alpha`` does. Gaussians go front to back in chunks of about
    ``budget`` candidates (bounded memory); each pixel carries its log transmittance from chunk to chunk and,
    inside a chunk, a segmented cumulative sum of log(1 - alpha) over its pairs sorted by pixel (stable, so
    front to back) gives the transmittance after each: a pair is kept while it stays above 1e-4, and a pixel
    whose walk stopped is closed. Candidates at closed pixels are skipped (whole Gaussians and rows first),
    which is where the time goes in dense scenes.
    """
    device = means2d.device
    ids = torch.nonzero((radii > 0).all(-1)).squeeze(-1)
    if len(ids) == 0:
        return _no_pairs(means2d)
    ids = ids[torch.sort(depths[ids], stable=True).indices]  # front to back, ties by Gaussian index
    m2d, con, opa = means2d[ids], conics[ids], opacities[ids]
    x0, x1, y0, y1 = _tile_boxes(m2d, radii[ids], width, height, tile_size)
    a, b, c, det, Q, ok = _alpha_ellipses(m2d, con, opa)
    mx, my = m2d.double().unbind(-1)
    det_safe = det.clamp(min=1e-300)
    zero = torch.zeros_like(Q)
    # Bounding box of the ellipse (pixel centres p + 0.5 within its extent), intersected with the tile box.
    ext_x = torch.where(ok, torch.sqrt(2.0 * Q * c / det_safe), zero)
    ext_y = torch.where(ok, torch.sqrt(2.0 * Q * a / det_safe), zero)
    col_lo = _clip(torch.ceil(mx - ext_x - 0.5 - _slack(mx, ext_x)), ok, x0, x1, x0)
    col_hi = _clip(torch.floor(mx + ext_x - 0.5 + _slack(mx, ext_x)) + 1.0, ok, x0, x1, x1)
    row_lo = _clip(torch.ceil(my - ext_y - 0.5 - _slack(my, ext_y)), ok, y0, y1, y0)
    row_hi = _clip(torch.floor(my + ext_y - 0.5 + _slack(my, ext_y)) + 1.0, ok, y0, y1, y1)
    col_hi, row_hi = torch.maximum(col_hi, col_lo), torch.maximum(row_hi, row_lo)
    area = (col_hi - col_lo) * (row_hi - row_lo)  # candidates, at most
    cumulative_area = torch.cumsum(area, 0)
    n_pixels = width * height
    budget = budget or max(1 << 16, 2 * n_pixels)
    # Per Gaussian, what the row spans need (float64) and what ``_alpha`` reads (its own dtype).
    span_params = torch.stack([mx, my, a, b, det, Q, ok.double(), x0.double(), x1.double()])
    alpha_params = [t.contiguous() for t in (m2d[:, 0], m2d[:, 1], con[:, 0], con[:, 1], con[:, 2], opa)]
    log_transmittance = torch.zeros(n_pixels, dtype=torch.float64, device=device)  # so far, per pixel
    is_open = torch.ones(n_pixels, dtype=torch.bool, device=device)  # not stopped yet
    any_closed = False
    pairs = []
    position = 0
    while position < len(ids):
        # The next Gaussians, front to back, holding about ``budget`` candidates; skip those with no open pixel.
        done_area = int(cumulative_area[position - 1]) if position else 0
        if any_closed:
            window_end = int(torch.searchsorted(cumulative_area, done_area + 8 * budget, right=True)) + 1
            window = torch.arange(position, min(window_end, len(ids)), device=device)
            alive = _open_in_box(is_open, width, height, col_lo[window], col_hi[window], row_lo[window],
                                 row_hi[window]) > 0
            taken = int(torch.searchsorted(torch.cumsum(area[window] * alive, 0), budget, right=True))
            taken = max(taken, 1)
            chunk = window[:taken][alive[:taken]]
        else:
            taken = int(torch.searchsorted(cumulative_area, done_area + budget, right=True)) - position
            taken = max(taken, 1)
            chunk = torch.arange(position, position + taken, device=device)
        position += taken
        if len(chunk) == 0:
            continue
        # One entry per (Gaussian, row), front to back.
        n_rows = row_hi[chunk] - row_lo[chunk]
        row_owner = torch.repeat_interleave(n_rows)
        owner = chunk.index_select(0, row_owner)
        y = (torch.arange(len(owner), device=device)
             + (row_lo[chunk] - torch.cumsum(n_rows, 0) + n_rows).index_select(0, row_owner))
        # The ellipse's span on this row of pixel centres, intersected with the tile box.
        mx_o, my_o, a_o, b_o, det_o, Q_o, ok_o, x0_o, x1_o = span_params.index_select(1, owner)
        ok_o = ok_o.bool()
        a_o = a_o.clamp(min=1e-300)
        dy = my_o - (y.double() + 0.5)
        half = torch.sqrt((2.0 * a_o * Q_o - det_o * dy * dy).clamp(min=0.0)) / a_o
        centre = mx_o + b_o * dy / a_o
        lo = _clip(torch.ceil(centre - half - 0.5 - _slack(centre, half)), ok_o, x0_o, x1_o, x0_o)
        hi = _clip(torch.floor(centre + half - 0.5 + _slack(centre, half)) + 1.0, ok_o, x0_o, x1_o, x1_o)
        count = (hi - lo).clamp(min=0)
        if any_closed:  # rows whose span holds no open pixel
            open_before = torch.zeros(height, width + 1, dtype=torch.int32, device=device)
            torch.cumsum(is_open.view(height, width), 1, out=open_before[:, 1:])
            open_before = open_before.view(-1)
            row_start = y * (width + 1)
            count *= (open_before.index_select(0, row_start + hi.clamp(min=0))
                      > open_before.index_select(0, row_start + lo.clamp(max=width)))
        # One entry per candidate (Gaussian, pixel), front to back; ``row`` is non-decreasing (cheap gathers).
        row = torch.repeat_interleave(count)
        if len(row) == 0:
            continue
        x = torch.arange(len(row), device=device) + (lo - torch.cumsum(count, 0) + count).index_select(0, row)
        y = y.index_select(0, row)
        g = owner.index_select(0, row)
        p = [column.index_select(0, owner).index_select(0, row) for column in alpha_params]
        alpha = _alpha_parts(*p, x.to(p[0].dtype) + 0.5, y.to(p[0].dtype) + 0.5)[0]
        flat = y * width + x
        passing = alpha >= ALPHA_THRESHOLD
        if any_closed:
            passing &= is_open.index_select(0, flat)
        passing = torch.nonzero(passing).squeeze(-1)
        key = flat.index_select(0, passing)
        key = key.int() if n_pixels < 2**31 else key
        take = passing.index_select(0, torch.argsort(key, stable=True))  # each pixel's pairs stay front to back
        pixel, g, alpha = flat.index_select(0, take), g.index_select(0, take), alpha.index_select(0, take)
        log_keep = torch.log1p(-alpha.double())
        log_after = _segmented_cumsum(log_keep, pixel)[0]  # log transmittance after each pair
        if position > taken:  # not the first chunk: carry in what the pixel's earlier pairs left
            log_after += log_transmittance.index_select(0, pixel)
        kept = log_after > math.log(TRANSMITTANCE_MIN)  # decreasing within a pixel: a prefix of its pairs
        transmittance = torch.exp(log_after - log_keep).to(alpha.dtype)  # before each pair
        chosen = (pixel, g, alpha, transmittance, log_keep)
        if not bool(kept.all()):
            is_open[pixel[~kept]] = False  # stopped
            any_closed = True
            kept = torch.nonzero(kept).squeeze(-1)
            chosen = tuple(t.index_select(0, kept) for t in chosen)
        pixel, g, alpha, transmittance, log_keep = chosen
        log_transmittance.index_add_(0, pixel, log_keep)
        pairs.append((pixel, g, alpha, transmittance))
    if not pairs:
        return _no_pairs(means2d)
    pixel, g, alpha, transmittance = (torch.cat(t) for t in zip(*pairs))
    if len(pairs) > 1:  # chunk by chunk -> pixel by pixel, each still front to back
        order = torch.argsort(pixel.int() if n_pixels < 2**31 else pixel, stable=True)
        pixel, g, alpha, transmittance = (t.index_select(0, order) for t in (pixel, g, alpha, transmittance))
    return pixel, ids.index_select(0, g), alpha, transmittance


def _open_in_box(is_open, width, height, x0, x1, y0, y1):
    """Number of open pixels in each box [x0, x1) x [y0, y1) (summed-area table)."""
    table = torch.zeros(height + 1, width + 1, dtype=torch.int64, device=is_open.device)
    table[1:, 1:] = is_open.view(height, width).long().cumsum(0).cumsum(1)
    table = table.view(-1)
    w = width + 1
    return (table.index_select(0, y1 * w + x1) - table.index_select(0, y0 * w + x1)
            - table.index_select(0, y1 * w + x0) + table.index_select(0, y0 * w + x0))


def _no_pairs(means2d):
    empty = torch.zeros(0, dtype=torch.long, device=means2d.device)
    return empty, empty, means2d.new_zeros(0), means2d.new_zeros(0)


def _slack(centre, half):
    """Room for float64 rounding when turning an ellipse span into pixel indices (only ever widens it)."""
    return 1e-9 * (centre.abs() + half + 1.0)


def _clip(bound, ok, lo, hi, fallback):
    """A float64 pixel bound, where ``ok``, else ``fallback``; clamped to [lo, hi] as int64 (nan-safe)."""
    bound = torch.where(ok, bound, fallback.double())
    bound = torch.minimum(torch.maximum(bound, lo.double()), hi.double())
    return torch.where(torch.isnan(bound), fallback.double(), bound).long()


def _segmented_cumsum(values, segment, totals: bool = False):
    """Inclusive cumulative sums of ``values`` restarting wherever the (sorted) ``segment`` id changes, and,
    if asked, each element's segment total.

    Each segment's total is taken out of the running sum at the next segment's start, so the running sum stays
    at the scale of one segment and no precision is lost to earlier segments.
    """
    if len(values) == 0:
        return values, values
    start = torch.ones_like(segment, dtype=torch.bool)
    torch.ne(segment[1:], segment[:-1], out=start[1:])
    starts = torch.nonzero(start).squeeze(-1)
    segment_id = torch.cumsum(start, 0) - 1
    segment_total = torch.zeros(len(starts), dtype=values.dtype, device=values.device)
    segment_total.index_add_(0, segment_id, values)
    previous_total = torch.zeros_like(segment_total)
    previous_total[1:] = segment_total[:-1]
    running = torch.cumsum(values.index_add(0, starts, -previous_total), 0)
    # What earlier segments left in the running sum (rounding only): its value before the start, less the total.
    before = running.index_select(0, (starts - 1).clamp(min=0))
    before[0] = 0.0
    inclusive = running - (before - previous_total).index_select(0, segment_id)
    return inclusive, (segment_total.index_select(0, segment_id) if totals else None)


def _alpha_parts(mx, my, a, b, c, opacity, px, py):
    """``_alpha`` from separate components, with sigma and d = mean - pixel."""
    dx, dy = mx - px, my - py
    sigma = 0.5 * (a * dx**2 + c * dy**2) + b * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), MAX_ALPHA)
    return torch.where(sigma >= 0, alpha, torch.zeros_like(alpha)), sigma, dx, dy


def _alpha(mean2d, conic, opacity, pixel):
    """gsplat's per-pixel alpha; sigma < 0 (numerically non-PSD conic) counts as no contribution."""
    return _alpha_parts(mean2d[..., 0], mean2d[..., 1], conic[..., 0], conic[..., 1], conic[..., 2], opacity,
                        pixel[..., 0], pixel[..., 1])[0]
