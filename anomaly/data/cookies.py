"""Procedural cat-cookie data set in the MVTec AD layout.

Stands in for the 31 photos of handmade cat-shaped cookies of the original project: a golden-brown
cat head with two ears, a chocolate patch on the forehead, chocolate eyes and nose, a raised paw
with pad imprints and a curled tail, on a light grey table. Normal cookies vary the way handmade
ones do (pose, chocolate placement and smears, browning, grain, hairline cracks, lighting, noise);
defective ones are broken (`crack`), carry a blob of whole-grain `mustard`, or lie under a piece
of `plastic` wrap, each with a pixel-exact mask.

Everything is drawn in coordinates relative to the image, so a seed gives the same cookie at any
size; each image has its own generator seeded by (seed, split, kind, index).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

GENERATOR_VERSION = "1.0"
KINDS = ("crack", "mustard", "plastic")
PRESETS = {  # train/good, test/good, then images per defect kind
    "tiny": {"train": 8, "good": 4, "crack": 2, "mustard": 2, "plastic": 2},
    "toy": {"train": 18, "good": 6, "crack": 3, "mustard": 2, "plastic": 2},
    "benchmark": {"train": 200, "good": 50, "crack": 30, "mustard": 30, "plastic": 30},
}
_KIND_IDS = {"good": 0, "crack": 1, "mustard": 2, "plastic": 3}
_F = np.float32


# --- signed distances in cookie units (negative inside) -------------------------------------------
def _ellipse(u, v, cx, cy, a, b, ang=0.0):
    c, s = np.cos(ang), np.sin(ang)
    x, y = ((u - cx) * c + (v - cy) * s) / a, (-(u - cx) * s + (v - cy) * c) / b
    r = np.sqrt(x * x + y * y)
    return (r - 1) * r / (np.sqrt((x / a) ** 2 + (y / b) ** 2) + 1e-6)


def _capsule(u, v, p, q, r):
    pu, pv, eu, ev = u - p[0], v - p[1], q[0] - p[0], q[1] - p[1]
    t = np.clip((pu * eu + pv * ev) / (eu * eu + ev * ev), 0, 1)
    return np.hypot(pu - t * eu, pv - t * ev) - r


def _polygon(u, v, pts):
    """Exact signed distance to a closed polygon (after Inigo Quilez)."""
    d, inside = np.full(u.shape, np.inf, _F), np.zeros(u.shape, bool)
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, 1, axis=0)):
        eu, ev, wu, wv = x1 - x0, y1 - y0, u - x0, v - y0
        t = np.clip((wu * eu + wv * ev) / (eu * eu + ev * ev), 0, 1)
        d = np.minimum(d, (wu - t * eu) ** 2 + (wv - t * ev) ** 2)
        inside ^= ((v >= y0) != (v >= y1)) & ((eu * wv > ev * wu) == (y1 > y0))
    return np.where(inside, -1, 1) * np.sqrt(d)


def _smin(a, b, k):
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.minimum(a, b) - h * h * k / 4


def _cover(d, px):
    """Anti-aliased coverage of the region d < 0, one pixel wide whatever d's scale."""
    gy, gx = np.gradient(d)
    return np.clip(0.5 - d / (np.hypot(gx, gy) + 1e-6 / px), 0, 1).astype(_F)


def _noise(rng, cells, size, order=3):
    """Smooth noise in [-1, 1]-ish whose feature size is 1/cells of the image at any size."""
    g = rng.standard_normal((cells, cells)).astype(_F)
    return ndimage.zoom(g, size / cells, order=order, mode="mirror", grid_mode=True)[:size, :size]


# --- the cookie ---------------------------------------------------------------------------------
def _cookie_shape(rng):
    """Jittered control points of the silhouette, in cookie units (about 1 wide, y down)."""
    j = lambda *p: np.array(p, _F) + rng.normal(0, 0.008, len(p)).astype(_F)  # noqa: E731
    tail = rng.uniform(-0.04, 0.04)
    return {
        "head": (*j(-0.12, -0.03), *j(0.35, 0.25), rng.uniform(2.6, 3.4)),
        "ears": [np.array([[-0.38, -0.18], [-0.3, -0.39], [-0.2, -0.2]], _F) + j(0, 0),
                 np.array([[-0.08, -0.2], [0.03, -0.41], [0.11, -0.19]], _F) + j(0, 0)],
        "paw": (*j(0.33, -0.08), 0.15 * rng.uniform(0.95, 1.05)),
        "toes": [j(0.36 + 0.1 * np.cos(a), -0.08 + 0.1 * np.sin(a)) for a in (-1.3, -0.55, 0.2)],
        "tail": [j(-0.25, 0.12), j(-0.22 + tail, 0.33), j(-0.3 + tail, 0.43), j(-0.42, 0.4)],
        "wobble": rng.standard_normal((10, 10)).astype(_F),
    }


def _cookie_sdf(u, v, sh):
    d = (np.abs((u - sh["head"][0]) / sh["head"][2]) ** sh["head"][4]
         + np.abs((v - sh["head"][1]) / sh["head"][3]) ** sh["head"][4]) ** (1 / sh["head"][4])
    d = (d - 1) * 0.27
    for ear in sh["ears"]:
        d = _smin(d, _polygon(u, v, ear) - 0.025, 0.06)
    d = _smin(d, _ellipse(u, v, *sh["paw"][:2], sh["paw"][2], sh["paw"][2] * 0.95), 0.08)
    d = _smin(d, _ellipse(u, v, 0.2, 0.08, 0.13, 0.12), 0.05)
    for t in sh["toes"]:
        d = _smin(d, np.hypot(u - t[0], v - t[1]) - 0.05, 0.03)
    tail = sh["tail"]
    for p, q in zip(tail[:-1], tail[1:]):
        d = _smin(d, _capsule(u, v, p, q, 0.085), 0.05)
    w = ndimage.map_coordinates(sh["wobble"], [(v + 0.6) * 7.5, (u + 0.6) * 7.5], order=1,
                                mode="nearest")
    return d + 0.006 * w


def _chocolate(rng):
    """Chocolate pieces as ('e', cx, cy, a, b, angle) ellipses or ('p', vertices) polygons."""
    pieces = [("p", np.array([[0.015, -0.26], [-0.045, -0.14], [0.065, -0.14]], _F))]
    for cx, cy, a, b in [(-0.37, 0.0, 0.05, 0.028), (0.11, -0.01, 0.05, 0.028),
                         (-0.24, -0.09, 0.022, 0.022), (-0.02, -0.1, 0.022, 0.022),
                         (-0.31, 0.09, 0.02, 0.02), (0.06, 0.08, 0.02, 0.02),
                         (-0.13, -0.005, 0.045, 0.025)]:
        pieces.append(("e", cx, cy, a, b, 0.0))
    pieces += [("e", -0.15, 0.04, 0.014, 0.03, 0.45), ("e", -0.11, 0.04, 0.014, 0.03, -0.45)]
    out = []
    for p in pieces:
        dx, dy = rng.normal(0, 0.01, 2)
        k = rng.uniform(0.8, 1.2)
        if p[0] == "e":
            out.append(("e", p[1] + dx, p[2] + dy, p[3] * k, p[4] * k, p[5] + rng.normal(0, 0.2)))
        else:
            c = p[1].mean(0)
            out.append(("p", (p[1] - c) * k + c + [dx, dy]))
    return out


def _piece_sdf(u, v, p):
    return _ellipse(u, v, *p[1:]) if p[0] == "e" else _polygon(u, v, p[1]) - 0.018


def _piece_box(p, to_px, size, grow):
    c = np.array(p[1:3] if p[0] == "e" else p[1].mean(0), _F)
    r = (max(p[3:5]) if p[0] == "e" else 0.08) + grow
    (x0, y0), (x1, y1) = to_px(c - r), to_px(c + r)
    lo = np.clip(np.floor(np.minimum([x0, y0], [x1, y1])).astype(int) - 2, 0, size)
    hi = np.clip(np.ceil(np.maximum([x0, y0], [x1, y1])).astype(int) + 2, 0, size)
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _inside_point(rng, sh, margin, region=((-0.45, 0.45), (-0.3, 0.35))):
    """A random point at least `margin` inside the cookie."""
    for _ in range(200):
        p = rng.uniform(*zip(*region)).astype(_F)
        if _cookie_sdf(p[:1], p[1:], sh)[0] < -margin:
            return p
    return np.array([-0.12, 0.0], _F)


# --- defects ---------------------------------------------------------------------------------
def _crack(rng, u, v, sh, px, scale, contrast):
    """Signed side field, gap width, tip and displacement of a broken cookie."""
    c = _inside_point(rng, sh, 0.08, ((-0.3, 0.2), (-0.2, 0.15)))
    ang = rng.uniform(0, np.pi)
    t = (u - c[0]) * np.cos(ang) + (v - c[1]) * np.sin(ang)
    n = -(u - c[0]) * np.sin(ang) + (v - c[1]) * np.cos(ang)
    knots = np.linspace(-0.8, 0.8, 50)
    bend = np.cumsum(rng.normal(0, 0.012, 50)) + rng.normal(0, 0.004, 50)
    s = n - np.interp(t, knots, bend - np.interp(0, knots, bend)).astype(_F)
    width = max(np.exp(rng.uniform(np.log(0.006), np.log(0.02))) * scale, 1.6 / px)
    full = rng.random() < 0.6
    tip = 0.8 if full else rng.uniform(-0.15, 0.25) * scale
    if not full and rng.random() < 0.5:
        t = -t
    shift = rng.uniform(0.005, 0.03) * scale * (rng.random() < 0.7) if full else 0.0
    taper = np.clip((tip - t) / 0.06, 0, 1)
    gap = np.clip(np.abs(s) * px - width * px * taper / 2 + 0.5, 0, 1)
    gap = np.where(taper > 0, gap, 1).astype(_F)
    move = np.array([-np.sin(ang), np.cos(ang)]) * shift * px  # along +n, in pixels
    return s, gap, move


def _mustard(rng, u, v, sh, scale, out_col, out_h):
    """Paint a lumpy whole-grain mustard blob; returns its coverage."""
    r = np.exp(rng.uniform(np.log(0.025), np.log(0.09))) * scale
    c = _inside_point(rng, sh, r * 0.8)
    n = rng.integers(4, 9)
    lumps = c + rng.normal(0, r * 0.45, (n, 2)).astype(_F)
    rad = r * rng.uniform(0.35, 0.65, n)
    d = np.full(u.shape, np.inf, _F)
    for p, rr in zip(lumps, rad):
        d = _smin(d, np.hypot(u - p[0], v - p[1]) - rr, r * 0.3)
    seeds = c + rng.uniform(-1.3, 1.3, (int(40 + 30 * rng.random()), 2)).astype(_F) * r
    srad = r * rng.uniform(0.09, 0.16, len(seeds))
    ds = np.min([np.hypot(u - p[0], v - p[1]) - rr for p, rr in zip(seeds, srad)], axis=0)
    dark = np.min([np.hypot(u - p[0], v - p[1]) - rr * 0.7
                   for p, rr in zip(seeds[::3] + r * 0.07, srad[::3])], axis=0)
    paste = np.array([0.80, 0.62, 0.17]) * rng.uniform(0.85, 1.05)
    seed_c = np.array([0.93, 0.82, 0.50]) * rng.uniform(0.9, 1.05)
    husk = np.array([0.38, 0.24, 0.10])
    k_seed = np.clip(-ds / (r * 0.05), 0, 1)[..., None]
    col = paste * (1 - k_seed) + seed_c * k_seed
    col = np.where((dark < 0)[..., None], husk, col)
    h = np.clip(-d / r, 0, 1) ** 0.5 + 0.25 * np.clip(-ds / (r * 0.12), 0, 1)
    out_col[:] = col.astype(_F)
    out_h[:] = h
    return d


def _plastic(rng, u, v, sh, scale):
    """Outline and wrinkle field of a piece of crumpled wrap."""
    c = _inside_point(rng, sh, 0.05)
    length = np.exp(rng.uniform(np.log(0.12), np.log(0.45))) * scale ** 0.5
    width = length * rng.uniform(0.35, 0.7)
    ang = rng.uniform(0, np.pi)
    k = rng.integers(7, 11)
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    rr = rng.uniform(0.75, 1.1, k)
    pts = np.stack([np.cos(a) * length * rr, np.sin(a) * width * rr], 1)
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])
    d = _polygon(u, v, (pts @ rot + c).astype(_F))
    tt = (u - c[0]) * np.cos(ang) + (v - c[1]) * np.sin(ang)
    nn = -(u - c[0]) * np.sin(ang) + (v - c[1]) * np.cos(ang)
    return d, tt, nn, length


# --- one image -----------------------------------------------------------------------------------
def render_cookie(rng: np.random.Generator, size: int = 256, kind: str = "good",
                  difficulty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one cookie photo.

    Args:
        rng: the image's own generator; its draws do not depend on `size`.
        size: side of the square image in pixels.
        kind: "good" or one of `KINDS`.
        difficulty: see `make_cookies`.

    Returns:
        The image as uint8 (size, size, 3) and the defect mask as bool (size, size).
    """
    scale, contrast = difficulty ** -0.5, float(np.clip(difficulty ** -0.5, 0.15, 1.0))
    g = (np.arange(size, dtype=_F) + 0.5) / size
    x, y = np.meshgrid(g, g)
    # pose: cookie units -> image units
    centre = np.clip(rng.normal(0.5, 0.02, 2), 0.46, 0.54).astype(_F) + [0.0, 0.02]
    k = rng.uniform(0.84, 0.92)
    th = np.clip(rng.normal(0, 0.07), -0.15, 0.15)
    ct, st = np.cos(th), np.sin(th)
    u = ((x - centre[0]) * ct + (y - centre[1]) * st) / k
    v = (-(x - centre[0]) * st + (y - centre[1]) * ct) / k
    px = k * size  # pixels per cookie unit

    def to_px(p):
        return ((p[0] * ct - p[1] * st) * k + centre[0]) * size, \
               ((p[0] * st + p[1] * ct) * k + centre[1]) * size

    sh = _cookie_shape(rng)
    d = _cookie_sdf(u, v, sh)
    alpha = _cover(d, px)
    depth = np.maximum(-d, 0)

    # dough: colour, browning toward the rim, grain, speckles
    base = np.array([0.74, 0.51, 0.29], _F) * rng.normal(1, 0.025, 3) * rng.uniform(0.9, 1.08)
    rim = np.exp(-depth / rng.uniform(0.025, 0.045))[..., None]
    col = base * (1 + 0.07 * _noise(rng, 6, size))[..., None]
    col = col * (1 - 0.3 * rim * np.array([0.8, 1.0, 1.2], _F))
    grain = _noise(rng, 90, size, order=1)
    col = col * (1 + 0.05 * grain)[..., None]
    speck = _noise(rng, 150, size, order=1)
    col = col * np.where(speck > 2.1, 0.8, np.where(speck < -2.3, 1.08, 1.0))[..., None]
    height = np.clip(depth / 0.04, 0, 1) ** 0.5 + 0.03 * grain

    # paw pad imprints
    pads = [(*sh["paw"][:2], 0.035, 0.03)] + [(0.36 + 0.07 * np.cos(a), -0.08 + 0.07 * np.sin(a),
                                               0.014, 0.014) for a in (-1.3, -0.55, 0.2)]
    dp = np.min([_ellipse(u, v, cx + rng.normal(0, 0.006), cy + rng.normal(0, 0.006), a, b)
                 for cx, cy, a, b in pads], axis=0)
    cov = _cover(dp, px)[..., None]
    col = col * (1 - 0.3 * cov)
    height = height - 0.35 * cov[..., 0]

    # chocolate pieces, some smeared
    dc = np.full((size, size), np.inf, _F)
    stain = np.zeros((size, size), _F)
    for p in _chocolate(rng):
        sl = _piece_box(p, to_px, size, 0.04)
        if sl[0].start >= sl[0].stop or sl[1].start >= sl[1].stop:
            continue
        dc[sl] = np.minimum(dc[sl], _piece_sdf(u[sl], v[sl], p))
        if rng.random() < 0.35:
            o = rng.normal(0, 0.012, 2)
            q = ("e", p[1] + o[0], p[2] + o[1], *[w * 1.35 for w in p[3:5]], p[5]) \
                if p[0] == "e" else ("p", (p[1] - p[1].mean(0)) * 1.35 + p[1].mean(0) + o)
            ds = _piece_sdf(u[sl], v[sl], q)
            stain[sl] = np.maximum(stain[sl], np.clip(-ds / 0.012, 0, 1) * rng.uniform(0.2, 0.5))
    choc = np.array([0.21, 0.12, 0.08], _F) * rng.uniform(0.85, 1.15)
    col = col * (1 - stain[..., None]) + choc * 1.4 * stain[..., None]
    ca = np.where(np.isfinite(dc), _cover(np.where(np.isfinite(dc), dc, 1.0), px), 0)[..., None]
    col = col * (1 - ca) + choc * ca
    height = height + 0.6 * np.clip(-dc / 0.012, 0, 1) ** 0.5

    # natural hairline cracks: thin, short, low contrast
    lines = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(lines)
    for _ in range(rng.integers(0, 4)):
        p, a = _inside_point(rng, sh, 0.04), rng.uniform(0, 2 * np.pi)
        pts = []
        for _ in range(rng.integers(3, 6)):
            pts.append(to_px(p))
            a += rng.normal(0, 0.5)
            p = p + rng.uniform(0.012, 0.025) * np.array([np.cos(a), np.sin(a)], _F)
        draw.line([tuple(map(float, q)) for q in pts], fill=int(rng.uniform(90, 160)),
                  width=max(1, round(0.003 * size)))
    hair = ndimage.gaussian_filter(np.asarray(lines, _F) / 255, 0.4) * min(1, 0.004 * size)
    col = col * (1 - 0.35 * hair[..., None])

    mask = np.zeros((size, size), bool)
    if kind == "mustard":
        mcol, mh = np.zeros((size, size, 3), _F), np.zeros((size, size), _F)
        dm = _mustard(rng, u, v, sh, scale, mcol, mh)
        ma = _cover(dm, px)[..., None] * contrast
        col = col * (1 - ma) + mcol * ma
        height = height + 1.5 * mh * ma[..., 0]
        mask = ma[..., 0] >= 0.5 * contrast

    # relief lighting, gloss on chocolate
    light = rng.uniform(np.pi * 1.1, np.pi * 1.4)
    gy, gx = np.gradient(height)
    slope = -(gx * np.cos(light) + gy * np.sin(light)) * px / 60
    col = col * (1 + np.clip(slope, -0.3, 0.3))[..., None]
    col = col + (0.5 * np.clip(slope - 0.08, 0, 1) ** 1.5 * ca[..., 0])[..., None]

    if kind == "crack":
        s, gap, move = _crack(rng, u, v, sh, px, scale, contrast)
        crumb = (1 - gap) * (1 - contrast)
        col = col * (1 - 0.5 * crumb[..., None])
        kept = alpha * (1 - contrast * (1 - gap))
        a0, a1 = kept * (s <= 0), kept * (s > 0)
        m = np.round(move).astype(int)
        a1s = ndimage.shift(a1, (m[1], m[0]), order=0, cval=0)
        cs = ndimage.shift(col, (m[1], m[0], 0), order=0, cval=0)
        new = a0 + a1s * (1 - a0)
        col = (col * a0[..., None] + cs * (a1s * (1 - a0))[..., None]) / np.maximum(new, 1e-6)[
            ..., None]
        mask = ((alpha >= 0.5) & (gap < 0.5)) | ((alpha >= 0.5) != (new >= 0.5))
        alpha = new

    # table, soft drop shadow, lighting gradient, composite
    bg = rng.uniform(0.83, 0.91) * np.array([1.0, 0.995, 0.98], _F) * rng.normal(1, 0.01, 3)
    bg = bg * (1 + 0.015 * _noise(rng, 5, size))[..., None]
    off = np.round(np.array([0.012, 0.02]) * size * rng.uniform(0.7, 1.3)).astype(int)
    shadow = ndimage.shift(ndimage.gaussian_filter(alpha, 0.02 * size), off[::-1], order=0)
    img = bg * (1 - rng.uniform(0.25, 0.4) * shadow)[..., None]
    img = img * (1 - alpha[..., None]) + col * alpha[..., None]
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(phi) + (y - 0.5) * np.sin(phi)
    img = img * (1 + rng.uniform(0.05, 0.16) * ramp - 0.12 * ((x - .5) ** 2 + (y - .5) ** 2))[
        ..., None]

    if kind == "plastic":
        dw, tt, nn, length = _plastic(rng, u, v, sh, scale)
        wa = _cover(dw, px)[..., None] * contrast
        f = rng.uniform(25, 45) / length ** 0.5
        wob = _noise(rng, 12, size)
        wr = np.sin(nn * f * 6 + 2.5 * wob + 0.5 * np.sin(tt * f * 2))
        streak = np.clip(wr - 0.75, 0, 1) * 4 + 0.6 * np.clip(np.abs(dw) * px < 1.5, 0, 1)
        sheen = np.clip(_noise(rng, 16, size) - 0.8, 0, 1)
        film = 0.16 + 0.5 * streak + 0.5 * sheen
        img = img * (1 - wa * np.clip(film, 0, 0.9)[..., None]) + (
            0.97 * wa * np.clip(film, 0, 0.9)[..., None])
        mask = wa[..., 0] >= 0.5 * contrast

    img = img + rng.normal(0, 0.008, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


# --- the data set ----------------------------------------------------------------------------------
def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def make_cookies(root: str | Path, preset: str = "toy", seed: int = 0, size: int = 256,
                 difficulty: float = 1.0, progress: bool = False,
                 overwrite: bool = False) -> dict:
    """Write a cookie data set in the MVTec AD layout and return its manifest.

    Layout: `train/good/000.png`, `test/good/000.png`, `test/<kind>/000.png` and
    `ground_truth/<kind>/000_mask.png` (L mode, 255 = defect) plus `manifest.json`.

    Args:
        root: folder to write; if it holds a data set with another manifest, `ValueError`
            unless `overwrite`, which deletes its `train/`, `test/`, `ground_truth/`.
        preset: "tiny" (8 + 4 good, 2 per defect), "toy" (18 + 6 good, crack 3, mustard 2,
            plastic 2, like the original 31 photos) or "benchmark" (200 + 50 good, 30 per defect).
        seed: same seed and `GENERATOR_VERSION` give byte-identical files.
        size: side of the square images in pixels, at least 32.
        difficulty: > 0. Defect linear sizes are multiplied by `difficulty ** -0.5` (areas by
            `1 / difficulty`; plastic, already large, by `difficulty ** -0.25`), and their
            contrast (mustard and wrap opacity, how much of a crack's gap shows the table) by
            `clip(difficulty ** -0.5, 0.15, 1)`. 1.0 is the reference; 2.0 halves areas and
            gives 71 % contrast; below 1 defects only grow.
        progress: show a tqdm progress bar.
        overwrite: replace an existing, different data set in `root`.

    Returns:
        The manifest: settings, counts per `split/kind` and, per image path, its split, kind,
        mask path, defect area in pixels and area fraction.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer of at least 32 pixels, got {size!r}")
    if not difficulty > 0:
        raise ValueError(f"difficulty must be positive, got {difficulty!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size, seed, difficulty = int(size), int(seed), float(difficulty)
    counts = PRESETS[preset]
    jobs = [("train", "good", i) for i in range(counts["train"])]
    jobs += [("test", "good", i) for i in range(counts["good"])]
    jobs += [("test", kind, i) for kind in KINDS for i in range(counts[kind])]
    manifest = {
        "generator_version": GENERATOR_VERSION, "preset": preset, "seed": seed, "size": size,
        "difficulty": difficulty,
        "counts": {f"{s}/{k}": sum(1 for j in jobs if j[:2] == (s, k)) for s, k, _ in jobs},
        "images": {},
    }
    root = Path(root)
    _check_root(root, manifest, overwrite)
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="cookies")
    for split, kind, i in it:
        rng = np.random.default_rng([seed, split == "test", _KIND_IDS[kind], i])
        image, mask = render_cookie(rng, size, kind, difficulty)
        rel = f"{split}/{kind}/{i:03d}.png"
        _save_png(image, root / rel)
        entry = {"split": split, "kind": kind, "mask": None, "defect_area": 0,
                 "area_fraction": 0.0}
        if kind != "good":
            entry["mask"] = f"ground_truth/{kind}/{i:03d}_mask.png"
            _save_png(mask.astype(np.uint8) * 255, root / entry["mask"])
            entry["defect_area"] = int(mask.sum())
            entry["area_fraction"] = round(int(mask.sum()) / size**2, 6)
        manifest["images"][rel] = entry
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _check_root(root: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse to mix two data sets in one folder."""
    if not root.exists() or not any(root.iterdir()):
        return
    settings = {k: v for k, v in manifest.items() if k != "images"}
    old = root / "manifest.json"
    if old.exists():
        previous = json.loads(old.read_text())
        if {k: previous.get(k) for k in settings} == settings:
            return
    if not overwrite:
        raise ValueError(f"{root} already holds other data (no manifest or a different one); "
                         "choose an empty folder or pass overwrite=True")
    for name in ("train", "test", "ground_truth"):
        shutil.rmtree(root / name, ignore_errors=True)
    old.unlink(missing_ok=True)
