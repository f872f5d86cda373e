"""Defects drawn into real photo crops, each with a pixel-exact mask (see `anomaly.data.photos`).

Six kinds, every one sized by a target area between about 0.1 % and 5 % of the image:

- `scratch`: one thin curved line, 1-3 pixels wide, brighter or darker than the surface;
- `stain`: a soft-edged blob that darkens, tints or bleaches what lies under it;
- `foreign`: a piece of another photo pasted in with an irregular outline;
- `hole`: missing material, an irregular region of near-black or near-white backing;
- `discolour`: a hue and saturation shift in a soft region (greyscale: brightness and contrast);
- `blur`: a soft region out of focus.

A defect's opacity `alpha` in [0, 1] is drawn anti-aliased; its mask is `alpha >= 0.5` (for a
discolouration or a blur, only where it changes a pixel by at least `VISIBLE`). A defect
that changes its own mask by less than `MIN_CHANGE` (mean absolute change in [0, 1] units; a
blur `MIN_CHANGE_BLUR`), e.g. a blur on a flat patch or a dark stain on a black sky, is drawn again
elsewhere (up to `TRIES` times, keeping the most visible), so every defect is visible to a person. All randomness comes from the `rng` passed in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("scratch", "stain", "foreign", "hole", "discolour", "blur")
AREA_RANGE = (0.001, 0.05)  # defect area as a fraction of the image (log-uniform)
MIN_CHANGE = 0.06  # mean absolute change inside the mask that a defect must reach
MIN_CHANGE_BLUR = 0.03  # a blur changes fine detail only: its mean change is smaller
TRIES = 30
ALTERING = ("discolour", "blur")  # kinds that alter what is there; masked only where it shows
VISIBLE = 0.02  # a pixel change (in [0, 1]) that shows, for the masks of ALTERING kinds
_F = np.float32


def _blob(
    rng: np.random.Generator, size: int, area: float, edge: float, where: np.ndarray | None = None
):
    """Alpha [size, size] of an irregular blob of about `area` pixels, edge width `edge` px,
    centred anywhere or, given `where` [size, size] >= 0, with probability proportional to it."""
    radius = float(np.sqrt(area / np.pi))
    aspect = rng.uniform(1.0, 2.2)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    margin = 0.5 * b
    cx, cy = rng.uniform(margin, size - margin, 2)
    if where is not None and where.sum() > 0:
        i = rng.choice(where.size, p=(where / where.sum()).ravel())
        cy, cx = divmod(int(i), size)
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size].astype(_F) + _F(0.5)
    dx, dy = xx - _F(cx), yy - _F(cy)
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / a
    v = (dy * np.cos(ang) - dx * np.sin(ang)) / b
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    wobble = np.ones_like(rho)
    for k in range(2, 7):  # a wavy outline: a few random harmonics
        wobble += rng.uniform(0, 0.3 / k**0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    dist = (rho - wobble) * np.minimum(a, b)  # about pixels, negative inside
    return np.clip(0.5 - dist / max(edge, 1.0), 0, 1).astype(_F)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    g = rng.standard_normal((cells, cells)).astype(_F)
    return np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC), _F)


def _scratch(rng, img, area, donors):
    size = img.shape[0]
    width = rng.choice([1.0, 1.5, 2.0, 3.0])
    length = float(np.clip(area / width, 0.12 * size, 0.9 * size))
    ss = 4  # drawn 4x larger, then averaged: anti-aliased
    canvas = Image.new("L", (size * ss, size * ss), 0)
    p = rng.uniform(0.1, 0.9, 2) * size
    heading, turn = rng.uniform(0, 2 * np.pi), rng.normal(0, 0.6) / length  # gently curved
    steps = max(4, int(length / 3))
    pts = []
    for _ in range(steps):
        pts.append(tuple((p * ss).tolist()))
        heading += 3 * turn + rng.normal(0, 0.04)
        p = p + 3 * np.array([np.cos(heading), np.sin(heading)])
    ImageDraw.Draw(canvas).line(pts, fill=255, width=int(width * ss + 0.5), joint="curve")
    alpha = np.asarray(canvas, _F).reshape(size, ss, size, ss).mean((1, 3)) / 255
    strength = np.clip(_smooth_noise(rng, size, 6) * 0.15 + rng.uniform(0.6, 0.95), 0.3, 1)
    target = rng.uniform(0.82, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.15)
    a = (alpha * strength)[..., None]
    return img * (1 - a) + _F(target) * a, alpha


def _stain(rng, img, area, donors):
    size = img.shape[0]
    alpha = _blob(rng, size, area, edge=rng.uniform(2, 6))
    inner = np.clip(0.75 + 0.25 * _smooth_noise(rng, size, 8), 0.3, 1)[..., None]
    a = alpha[..., None] * inner
    if rng.random() < 0.6:  # dark: oil, rust, coffee
        tint = np.array([1.0, 0.8, 0.55], _F) if img.shape[-1] == 3 else np.ones(1, _F)
        out = img * (1 - a * rng.uniform(0.35, 0.7) * (2 - tint))
    else:  # bleached or chalky
        out = img + (1 - img) * a * rng.uniform(0.35, 0.65)
    return out, alpha


def _foreign(rng, img, area, donors):
    size, c = img.shape[0], img.shape[-1]
    donor = donors[rng.integers(len(donors))]
    h, w = donor.shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    patch = donor[y : y + size, x : x + size].astype(_F) / 255
    if patch.ndim == 2:
        patch = patch[..., None]
    if c == 1 and patch.shape[-1] == 3:
        patch = (patch @ np.array([0.299, 0.587, 0.114], _F))[..., None]
    elif c == 3 and patch.shape[-1] == 1:
        patch = np.repeat(patch, 3, -1)
    alpha = _blob(rng, size, area, edge=1.0)
    a = alpha[..., None]
    return img * (1 - a) + patch * a, alpha


def _hole(rng, img, area, donors):
    size = img.shape[0]
    alpha = _blob(rng, size, area, edge=1.0)
    dark = rng.random() < 0.65
    level = rng.uniform(0.02, 0.12) if dark else rng.uniform(0.85, 0.97)
    # the wall of the hole: a shadow just inside its edge
    depth = ndimage.gaussian_filter(alpha, 2.0)
    fill = _F(level) * (1 - 0.5 * (1 - depth) * dark) + 0.02 * _smooth_noise(rng, size, 16)
    a = alpha[..., None]
    return img * (1 - a) + np.clip(fill, 0, 1)[..., None] * a, alpha


def _discolour(rng, img, area, donors):
    size = img.shape[0]
    if img.shape[-1] == 3:
        hsv = np.asarray(Image.fromarray((img * 255 + 0.5).astype(np.uint8)).convert("HSV"), _F)
        hsv = hsv / 255
        hsv[..., 0] = (hsv[..., 0] + rng.choice([-1, 1]) * rng.uniform(0.08, 0.25)) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.choice([0.2, 1.8]) + 0.05, 0, 1)
        shifted = Image.fromarray((hsv * 255 + 0.5).astype(np.uint8), "HSV").convert("RGB")
        shifted = np.asarray(shifted, _F) / 255
    else:
        gain, offset = rng.uniform(0.6, 1.4), rng.choice([-1, 1]) * rng.uniform(0.1, 0.22)
        shifted = np.clip((img - img.mean()) * gain + img.mean() + offset, 0, 1)
    # where the shift shows: grey or black parts of a colour photo barely change hue
    change = ndimage.gaussian_filter(np.abs(shifted - img).mean(-1), np.sqrt(area) / 3)
    alpha = _blob(rng, size, area, edge=rng.uniform(2, 5), where=change.astype(float) ** 2)
    a = alpha[..., None]
    return img * (1 - a) + shifted * a, alpha


def _blur(rng, img, area, donors):
    size = img.shape[0]
    sigma = rng.uniform(2.0, 5.0)
    blurred = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="reflect")
    # where there is detail to lose: a blur of a flat patch shows nothing
    detail = ndimage.gaussian_filter(np.abs(img - blurred).mean(-1), np.sqrt(area) / 3)
    alpha = _blob(rng, size, area, edge=rng.uniform(1.5, 3), where=detail.astype(float) ** 2)
    a = alpha[..., None]
    return img * (1 - a) + blurred * a, alpha


_DRAW = {
    "scratch": _scratch,
    "stain": _stain,
    "foreign": _foreign,
    "hole": _hole,
    "discolour": _discolour,
    "blur": _blur,
}


def add_defect(
    rng: np.random.Generator, image: np.ndarray, kind: str, donors: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw one defect of `kind` into `image`.

    Args:
        rng: the image's own generator.
        image: float32 [S, S, C] in [0, 1], C = 1 or 3, square.
        kind: one of `KINDS`.
        donors: uint8 photos (H, W) or (H, W, 3), each at least S x S, for `foreign` patches.

    Returns:
        The new image (float32, same shape), the mask (bool [S, S]) and a few facts:
        target area fraction, attempts needed and the mean change inside the mask.
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {KINDS}")
    size = image.shape[0]
    frac = float(np.exp(rng.uniform(*np.log(AREA_RANGE))))
    best = None
    for attempt in range(1, TRIES + 1):
        out, alpha = _DRAW[kind](rng, image, frac * size * size, donors)
        out = np.clip(out, 0, 1).astype(_F)
        mask = alpha >= 0.5
        if kind in ALTERING:  # only where the change shows (black sky keeps no hue)
            shows = ndimage.binary_closing(np.abs(out - image).max(-1) >= VISIBLE, iterations=2)
            mask &= shows
        if not mask.any():
            continue
        change = float(np.abs(out - image).mean(-1)[mask].mean())
        if best is None or change > best[3]:
            best = (out, mask, attempt, change)
        if change >= (MIN_CHANGE_BLUR if kind == "blur" else MIN_CHANGE):
            break
    out, mask, attempt, change = best
    return (
        out,
        mask,
        {"target_fraction": round(frac, 6), "attempts": attempt, "mean_change": round(change, 4)},
    )
