"""Drawing one cookie: the shapes, the chocolate, the three defect kinds, and `render_cookie`.

The generator behind `anomaly.data.cookies` (see its docstring for what the cookies look like).
Shapes are signed distance fields in cookie units (1 = about the cookie's width), so a seed draws
the same cookie at any image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("crack", "mustard", "plastic")
_F = np.float32


def _rgb(*c):  # a colour to broadcast over (3, H, W) images
    return np.array(c, _F)[:, None, None]


# --- signed distances (negative inside) and grids ------------------------------------------------
def _ellipse(u, v, cx, cy, a, b, ang=0.0):
    cx, cy, a, b, c, s = map(float, (cx, cy, a, b, np.cos(ang), np.sin(ang)))
    x, y = ((u - cx) * c + (v - cy) * s) / a, ((v - cy) * c - (u - cx) * s) / b
    r = np.sqrt(x * x + y * y)
    return (r - 1) * r / (np.sqrt((x / a) ** 2 + (y / b) ** 2) + 1e-6)  # first-order distance


def _capsule(u, v, p, q, r):
    (px, py), (qx, qy) = np.asarray([p, q], float).tolist()
    pu, pv, eu, ev = u - px, v - py, qx - px, qy - py
    t = np.clip((pu * eu + pv * ev) / (eu * eu + ev * ev), 0, 1)
    return np.hypot(pu - t * eu, pv - t * ev) - float(r)


def _box(u, v, cx, cy, a, b, r):
    cx, cy, a, b, r = map(float, (cx, cy, a, b, r))
    qx, qy = np.abs(u - cx) - a + r, np.abs(v - cy) - b + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _polygon(u, v, pts):
    """Exact signed distance to a closed polygon (after Inigo Quilez)."""
    d, inside = np.full(u.shape, np.inf, _F), np.zeros(u.shape, bool)
    pts = np.asarray(pts, float)
    for (x0, y0), (x1, y1) in zip(pts.tolist(), np.roll(pts, 1, axis=0).tolist()):
        eu, ev, wu, wv = x1 - x0, y1 - y0, u - x0, v - y0
        t = np.clip((wu * eu + wv * ev) / (eu * eu + ev * ev), 0, 1)
        d = np.minimum(d, (wu - t * eu) ** 2 + (wv - t * ev) ** 2)
        inside ^= ((v >= y0) != (v >= y1)) & ((eu * wv > ev * wu) == (y1 > y0))
    return np.where(inside, -1, 1) * np.sqrt(d)


def _smin(a, b, k):
    """Union that melts two shapes together over a distance k."""
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.minimum(a, b) - h * h * (k / 4)


def _wobble(u, v, waves):
    """A sum of random plane waves, to make outlines irregular."""
    return sum(np.sin(8 * abs(a) + 6 * (u * b + v * c) + e) for a, b, c, e in waves.tolist())


def _resample(a, size, smooth=False):
    """Interpolate cell-centred grids (n, n) or (k, n, n) to size x size pixels."""
    if a.shape[-1] == size and not smooth:
        return a
    method = Image.BICUBIC if smooth else Image.BILINEAR
    out = [
        np.asarray(Image.fromarray(np.ascontiguousarray(g, _F)).resize((size, size), method))
        for g in a.reshape(-1, *a.shape[-2:])
    ]
    return np.stack(out).reshape(*a.shape[:-2], size, size)


def _noise(rng, cells, size):
    """Smooth noise (std about 1) with features 1/cells of the image, the same at any size."""
    return _resample(rng.standard_normal((cells, cells)).astype(_F), size, smooth=True)


def _shift(a, dy, dx):
    """Shift the last two axes by whole pixels, filling with zeros."""
    out, (h, w) = np.zeros_like(a), a.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# --- the cookie -----------------------------------------------------------------------------------
def _cookie_shape(rng):
    """Jittered silhouette parameters in cookie units (x right, y down, origin mid-cookie)."""

    def j(*p):
        return np.array(p, _F) + rng.normal(0, 0.008, len(p)).astype(_F)

    return {
        "head": j(-0.1, -0.02, 0.36, 0.24),
        "paw": j(0.33, 0.0, 0.17, 0.2),
        "ears": [
            j(-0.4, -0.16, -0.27, -0.39, -0.1, -0.2).reshape(3, 2),
            j(-0.12, -0.2, -0.02, -0.405, 0.11, -0.18).reshape(3, 2),
        ],
        "thumb": j(0.21, -0.21, 0.045),
        "hip": j(-0.44, 0.07, 0.065),
        "foot": j(-0.34, 0.25, 0.13, 0.13),
        "waves": rng.normal(0, 1, (5, 4)).astype(_F),
    }


def _cookie_sdf(u, v, sh):
    d = _box(u, v, *sh["head"], 0.13)
    for ear in sh["ears"]:
        d = _smin(d, _polygon(u, v, ear) - 0.035, 0.05)
    d = _smin(d, _ellipse(u, v, *sh["paw"]), 0.07)
    for c in ("thumb", "hip"):
        d = _smin(d, np.hypot(u - sh[c][0], v - sh[c][1]) - sh[c][2], 0.03)
    d = _smin(d, _box(u, v, *sh["foot"], 0.08), 0.04)
    return d + 0.0025 * _wobble(u, v, sh["waves"])  # handmade, not quite regular


def _marks(rng, u, v):
    """Pad imprints of the paw and moulded grooves, pressed into the dough."""

    def j(*p):
        return np.array(p) + rng.normal(0, 0.005, 2)

    d = _ellipse(u, v, *j(0.375, 0.03), 0.045, 0.042)
    for cx, cy, a, b, ang in [
        (0.31, -0.115, 0.021, 0.032, 0.4),
        (0.375, -0.14, 0.021, 0.032, 0),
        (0.45, -0.03, 0.015, 0.015, 0),
        (0.455, 0.03, 0.015, 0.015, 0),
        (0.44, 0.09, 0.015, 0.015, 0),
    ]:
        d = np.minimum(d, _ellipse(u, v, *j(cx, cy), a, b, ang))
    for p, q, r in [
        ((0.21, -0.2), (0.235, -0.03), (0.22, 0.15)),
        ((-0.39, -0.03), (-0.38, 0.08), (-0.33, 0.15)),
    ]:
        p, q, r = j(*p), j(*q), j(*r)
        d = np.minimum(d, np.minimum(_capsule(u, v, p, q, 0.008), _capsule(u, v, q, r, 0.008)))
    return d


def _chocolate(rng):
    """Chocolate pieces placed by hand: ('e', cx, cy, a, b, angle), ('c', p, q, r), ('p', pts)."""
    eyes = [
        (-0.219, -0.1, 0.028, 0.028),
        (0.076, -0.09, 0.028, 0.028),  # eyes, then whiskers
        (-0.298, -0.005, 0.06, 0.028),
        (-0.27, 0.08, 0.045, 0.027),
        (0.18, 0.0, 0.058, 0.028),
        (0.162, 0.095, 0.045, 0.027),
    ]
    out = [("p", np.array([[0.036, -0.27], [-0.01, -0.2], [0.085, -0.2]]))]  # forehead patch
    for cx, cy, a, b in eyes:
        o, k = rng.normal(0, 0.009, 2), rng.uniform(0.85, 1.15)
        out.append(("e", cx + o[0], cy + o[1], a * k, b * k, rng.normal(0, 0.15)))
    o, nose = rng.uniform(0.85, 1.15), np.array([-0.071, -0.045]) + rng.normal(0, 0.01, 2)
    out.append(("e", *nose, 0.046 * o, 0.034 * o, rng.normal(0, 0.1)))
    for side in (-1, 1):  # the nose's two legs
        tip = nose + [0.042 * side, 0.078] + rng.normal(0, 0.008, 2)
        out.append(("c", nose + [0, 0.015], tip, 0.022 * rng.uniform(0.85, 1.15)))
    c, k = out[0][1].mean(0), rng.uniform(0.85, 1.15)
    out[0] = ("p", (out[0][1] - c) * k + c + rng.normal(0, 0.009, 2))
    return out


def _piece_sdf(u, v, p, grow=1.0, shift=(0.0, 0.0)):
    u, v = u - float(shift[0]), v - float(shift[1])
    if p[0] == "e":
        return _ellipse(u, v, p[1], p[2], p[3] * grow, p[4] * grow, p[5])
    if p[0] == "c":
        return _capsule(u, v, p[1], p[2], p[3] * grow)
    c = p[1].mean(0)
    return _polygon(u, v, (p[1] - c) * grow + c) - 0.05 * grow


def _inside_point(rng, sh, margin, lo=(-0.42, -0.3), hi=(0.45, 0.35)):
    """A random point at least `margin` inside the cookie."""
    for _ in range(100):
        p = rng.uniform(lo, hi)
        if _cookie_sdf(p[:1], p[1:], sh)[0] < -margin:
            return p
    return np.array([-0.12, -0.05])


def _edge_point(sh, ang):
    """Where a ray from mid-face at angle `ang` leaves the cookie."""
    r = np.linspace(0, 0.7, 281)
    u, v = -0.1 + r * np.cos(ang), -0.05 + r * np.sin(ang)
    i = int(np.argmax(_cookie_sdf(u, v, sh) > 0))
    return np.array([u[i], v[i]])


# --- defects (sizes already scaled by difficulty, never below a few pixels) ----------------------
def _crack(rng, u, v, sh, scale, px):
    """A break: side field s (cookie units), gap width (pixels), shift of the side s > 0."""
    full = rng.random() < 0.6
    if full:  # right through, one side maybe pushed away
        c, ang = _inside_point(rng, sh, 0.1, (-0.3, -0.2), (0.25, 0.1)), rng.uniform(0, np.pi)
        length = 2.0
    else:  # in from the rim
        a = rng.uniform(0, 2 * np.pi)
        ang = a + np.pi + rng.normal(0, 0.3)
        c = _edge_point(sh, a) - 0.03 * np.array([np.cos(ang), np.sin(ang)])
        length = 0.03 + max(np.exp(rng.uniform(np.log(0.06), np.log(0.35))) * scale, 5 / px)
    (cx, cy), ca, sa = c.tolist(), float(np.cos(ang)), float(np.sin(ang))
    t, n = (u - cx) * ca + (v - cy) * sa, (v - cy) * ca - (u - cx) * sa
    knots = np.linspace(-1, 1, 161)
    path = np.cumsum(rng.normal(0, 0.006, 161)) + rng.normal(0, 0.002, 161)
    s = n - np.interp(t, knots, path - np.interp(0, knots, path)).astype(_F)
    width = np.exp(rng.uniform(np.log(0.007), np.log(0.022))) * scale * px
    width = np.maximum(width * np.interp(t, knots[::8], rng.uniform(0.6, 1.3, 21)), 1.6)
    width = (width * np.clip((length - t) / min(0.08, length / 3), 0, 1)).astype(_F)
    shift = rng.uniform(0.006, 0.03) * scale * (rng.random() < 0.75) * full
    return s, width, np.array([-sa, ca]) * shift


def _mustard(rng, u, v, sh, scale, px, window):
    """A lumpy blob of whole-grain mustard: its pixel box, signed distance, colour and height."""
    r = max(float(np.exp(rng.uniform(np.log(0.035), np.log(0.12)))) * scale, 2.5 / px)
    c = _inside_point(rng, sh, r)
    box = window(c, 1.6 * r)
    u, v = u[box], v[box]
    lumps = c + rng.normal(0, r * 0.45, (rng.integers(4, 8), 2))
    lrad = r * rng.uniform(0.45, 0.75, len(lumps))

    def blob(uu, vv):
        d = np.full(np.shape(uu), np.inf, _F)
        for (x, y), rr in zip(lumps.tolist(), lrad.tolist()):
            d = _smin(d, np.hypot(uu - x, vv - y) - rr, r * 0.4)
        return d

    seeds = c + rng.uniform(-1.2, 1.2, (80, 2)) * r
    rad = r * rng.uniform(0.12, 0.2, 80)
    tone = rng.choice(4, 80, p=[0.35, 0.3, 0.2, 0.15])
    keep = blob(*seeds.T) < -0.3 * rad
    seeds, rad, tone = seeds[keep].astype(_F), rad[keep].astype(_F), tone[keep]
    pal = np.array([[0.8, 0.74, 0.5], [0.7, 0.62, 0.32], [0.55, 0.47, 0.22], [0.35, 0.24, 0.12]])
    paste = np.array([0.45, 0.36, 0.12]) * rng.uniform(0.85, 1.1)
    d = db = blob(u, v)
    col, z = np.broadcast_to(paste, u.shape + (3,)), np.zeros(u.shape, _F)
    if len(seeds):
        q, near = np.full(u.shape, np.inf, _F), np.zeros(u.shape, int)
        for i, (x, y, rr) in enumerate(zip(*seeds.T.tolist(), rad.tolist())):
            qi = np.hypot(u - x, v - y) / rr
            near, q = np.where(qi < q, i, near), np.minimum(qi, q)
        d = np.minimum(db, (q - 1) * rad[near])
        z = np.sqrt(np.clip(1 - q * q, 0, 1))
        col = np.where((q < 1)[..., None], pal[tone][near], paste)
    height = 0.5 * np.clip(-db / r, 0, 1) ** 0.5 + 0.5 * z
    return box, d, np.moveaxis(col, -1, 0).astype(_F), height.astype(_F)


def _plastic(rng, sh, scale, px):
    """A crumpled, twisted ribbon of wrap: outline (polygon), centre, direction and length."""
    c = _inside_point(rng, sh, 0.1, (-0.35, -0.25), (0.3, 0.15))
    length = max(np.exp(rng.uniform(np.log(0.15), np.log(0.55))) * scale**0.5, 10 / px)
    ang, m = rng.uniform(0, np.pi), 9
    t = np.linspace(-0.5, 0.5, m) * length
    bend = np.cumsum(rng.normal(0, 0.015, m))
    half = np.maximum(length * rng.uniform(0.18, 0.32) * rng.uniform(0.6, 1.2, m), 2 / px)
    left = np.stack([t + rng.normal(0, 0.008, m), bend - bend.mean() + half], 1)
    right = np.stack(
        [t + rng.normal(0, 0.008, m), bend - bend.mean() - half * rng.uniform(0.7, 1.0, m)], 1
    )
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])
    return np.concatenate([left, right[::-1]]) @ rot + c, c.tolist(), float(ang), float(length)


# --- one image ----------------------------------------------------------------------------------
def render_cookie(
    rng: np.random.Generator, size: int = 256, kind: str = "good", difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one cookie photo.

    Args:
        rng: the image's own generator. Only the sensor noise, drawn last, depends on `size`.
        size: side of the square image in pixels.
        kind: "good" or one of `KINDS`.
        difficulty: see `make_cookies`.

    Returns:
        The image, uint8 (size, size, 3), and the defect mask, bool (size, size).
    """
    scale = difficulty**-0.5
    contrast = float(np.clip(scale, 0.15, 1.0))
    k, th = rng.uniform(0.84, 0.92), np.clip(rng.normal(0, 0.06), -0.15, 0.15)
    cx, cy = (0.5 + np.clip(rng.normal(0, 0.02, 2), -0.04, 0.04)).tolist()
    ct, st, px = float(np.cos(th)), float(np.sin(th)), k * size  # px: pixels per cookie unit

    def grid(n):  # cookie coordinates of the centres of an n x n pixel grid
        g = (np.arange(n) + 0.5) / n
        x, y = g[None, :] - cx, g[:, None] - cy
        return ((x * ct + y * st) / k).astype(_F), ((y * ct - x * st) / k).astype(_F)

    def to_px(p):  # cookie coordinates -> PIL pixel coordinates
        return (
            (cx + k * (p[0] * ct - p[1] * st)) * size - 0.5,
            (cy + k * (p[0] * st + p[1] * ct)) * size - 0.5,
        )

    # signed distances on a grid of at most 96 x 96, then interpolated: they are smooth
    sh, pieces = _cookie_shape(rng), _chocolate(rng)
    n = min(size, 96)
    uc, vc = grid(n)
    dc, dst = np.full(uc.shape, 9, _F), np.full(uc.shape, 9, _F)
    for p in pieces:
        dc = np.minimum(dc, _piece_sdf(uc, vc, p))
        if rng.random() < 0.3:  # a smear of melted chocolate
            dst = np.minimum(dst, _piece_sdf(uc, vc, p, 1.35, rng.normal(0, 0.012, 2)))
    fields = [_cookie_sdf(uc, vc, sh), _marks(rng, uc, vc), dc, dst]
    blur = ndimage.gaussian_filter(np.clip(0.5 - fields[0] * (k * n), 0, 1), 0.018 * n)
    off = rng.uniform(0.7, 1.3) * np.array([0.016, 0.01]) * n
    fields.append(ndimage.shift(blur, off, order=1, mode="nearest"))  # drop shadow
    if kind == "plastic":
        wrap, wc, wang, wlen = _plastic(rng, sh, scale, px)
        fields.append(
            _polygon(uc, vc, wrap) + 0.004 * _wobble(3 * uc, 3 * vc, rng.normal(0, 1, (4, 4)))
        )
    fields = _resample(np.stack(fields).astype(_F), size)
    d, dmark, dc, dst, shadow = fields[:5]
    u, v = grid(size)
    alpha, depth = np.clip(0.5 - d * px, 0, 1), np.maximum(-d, 0)

    # natural hairline cracks: thin, short, low contrast
    lines = Image.new("L", (size, size), 0)
    draw, lw = ImageDraw.Draw(lines), max(1, round(0.003 * size))
    for _ in range(rng.integers(0, 4)):
        a = rng.uniform(0, 2 * np.pi)
        p = _edge_point(sh, a) if rng.random() < 0.5 else _inside_point(rng, sh, 0.04)
        a, pts = a + np.pi + rng.normal(0, 0.5), []
        for _ in range(rng.integers(3, 6)):
            pts.append(to_px(p))
            a += rng.normal(0, 0.6)
            p = p + rng.uniform(0.01, 0.02) * np.array([np.cos(a), np.sin(a)])
        draw.line(pts, fill=int(rng.uniform(100, 200)), width=lw)
    hair = ndimage.gaussian_filter(np.asarray(lines, _F) / 255, 0.5)

    # dough: colour, grain and speckles, browning toward the rim, imprints; images are (3, H, W)
    base = np.array([0.6, 0.4, 0.18]) * rng.normal(1, 0.03, 3) * rng.uniform(0.88, 1.1)
    grain, speck = _noise(rng, 140, size), _noise(rng, 200, size)
    mark = np.clip(0.5 - dmark * px, 0, 1)
    tone = (1 + 0.06 * _noise(rng, 5, size)) * (1 + 0.05 * grain) * (1 - 0.12 * mark)
    tone *= np.where(speck > 1.7, _F(0.85), np.where(speck < -1.8, _F(1.1), _F(1)))
    tone *= 1 - 0.4 * min(1.0, 0.003 * size / lw) * hair
    rim = np.exp(-depth / rng.uniform(0.02, 0.04)) * rng.uniform(0.25, 0.45)
    col = tone * (_rgb(*base) - rim * _rgb(*base * [0.75, 1, 1.3]))
    height = np.clip(depth / 0.04, 0, 1) ** 0.5 - 0.5 * mark + 0.02 * grain

    # chocolate: smears, pieces, raised and glossy
    choc = _rgb(0.16, 0.085, 0.045) * rng.uniform(0.85, 1.2)
    stain = np.clip(-dst / 0.015, 0, 1) * rng.uniform(0.25, 0.5)
    gloss = np.clip(0.5 - dc * px, 0, 1)
    cover = np.maximum(stain, gloss)
    col = col * (1 - cover) + choc * (np.where(gloss > 0, 1 + 0.15 * grain, _F(1.8)) * cover)
    height += 0.5 * np.clip(-dc / 0.012, 0, 1) ** 0.5

    mask, cavity = np.zeros((size, size), bool), 0.0
    if kind == "mustard":

        def window(c, r):  # pixel box around a disc in cookie units
            x, y = to_px(c)
            r = r * px + 3
            return (
                slice(max(0, int(y - r)), max(0, int(y + r + 2))),
                slice(max(0, int(x - r)), max(0, int(x + r + 2))),
            )

        box, dm, mcol, mh = _mustard(rng, u, v, sh, scale, px, window)
        ma = np.clip(0.5 - dm * px, 0, 1)
        mask[box] = ma >= 0.5
        ma *= contrast
        col[(slice(None), *box)] = col[(slice(None), *box)] * (1 - ma) + mcol * ma
        height[box] += mh * ma
        gloss[box] = np.maximum(gloss[box], 0.25 * ma)

    # relief lit from the upper left, gloss on chocolate and mustard
    light = rng.uniform(1.1, 1.4) * np.pi
    gy, gx = np.gradient(height)
    slope = (gx * -float(np.cos(light)) - gy * float(np.sin(light))) * (px / 60)
    col = col * (1 + np.clip(slope, -0.35, 0.35)) + 0.5 * np.clip(slope - 0.1, 0, 1) ** 1.5 * gloss

    if kind == "crack":  # dark broken walls, the table deep in the gap, one side pushed away
        s, width, move = _crack(rng, u, v, sh, scale, px)
        gap = np.clip(width / 2 - np.abs(s) * px + 0.5, 0, 1)
        deep = np.clip(width / 2 - np.abs(s) * px - 0.7, 0, 1)
        col += gap * contrast * (_rgb(*base) * (0.5 * rng.uniform(0.8, 1.2)) - col)
        kept = alpha * (1 - deep * contrast)
        a0, a1 = kept * (s <= 0), kept * (s > 0)
        dx, dy = (
            np.round(px * np.array([move[0] * ct - move[1] * st, move[0] * st + move[1] * ct]))
            .astype(int)
            .tolist()
        )
        a1, moved = _shift(a1, dy, dx), _shift(col, dy, dx)
        new = a0 + a1 * (1 - a0)
        col = (col * a0 + moved * (a1 * (1 - a0))) / np.maximum(new, 1e-6)
        near = np.abs(s) * px <= width / 2 + abs(dx) + abs(dy) + 1  # not the piece's far rim
        mask = (alpha >= 0.5) & ((gap >= 0.5) | ((new < 0.5) & near))
        cavity, alpha = np.clip(alpha - new, 0, 1) * near, new

    # table with contact and drop shadows, composite, light falling off
    bg = rng.uniform(0.8, 0.88) * np.array([1.0, 0.975, 0.935]) * rng.normal(1, 0.008, 3)
    contact = ndimage.gaussian_filter(alpha, 0.007 * size)
    table = (1 + 0.02 * _noise(rng, 4, size)) * (1 - rng.uniform(0.3, 0.45) * shadow)
    table *= (1 - 0.7 * contact) * (1 - 0.6 * cavity)
    g = ((np.arange(size) + 0.5) / size - 0.5).astype(_F)
    phi, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.14)
    fall = (
        1
        + amp * (g[None] * float(np.cos(phi)) + g[:, None] * float(np.sin(phi)))
        - 0.15 * (g[None] ** 2 + g[:, None] ** 2)
    )
    img = _rgb(*bg) * (table * (1 - alpha) * fall) + col * (alpha * fall)

    if kind == "plastic":  # film: faint haze, bright folds along the ribbon, crinkles, sheen
        dw = fields[5]
        mask = dw * px <= 0
        cw, sw = float(np.cos(wang)), float(np.sin(wang))
        tt = ((u - wc[0]) * cw + (v - wc[1]) * sw) / wlen
        nn = ((v - wc[1]) * cw - (u - wc[0]) * sw) / wlen
        g = rng.standard_normal((2, 32, 32))
        folds = ndimage.map_coordinates(g[0], [tt * 5, nn * 14], order=3, mode="grid-wrap")
        sheen = ndimage.map_coordinates(g[1], [tt * 2, nn * 4], order=1, mode="grid-wrap")
        sheen = np.clip(sheen - 0.3, 0, 1)
        crinkle = np.exp(-((_noise(rng, 40, size) / 0.06) ** 2))
        white = 0.12 + 0.6 * np.exp(-((folds / 0.15) ** 2)) + 0.3 * crinkle + 0.4 * sheen
        edge = np.exp(-0.5 * (dw * px + 1.2) ** 2) * (0.25 + 0.5 * sheen)  # just inside
        white = np.clip(white * np.clip(0.5 - dw * px, 0, 1) + edge, 0, 0.9) * contrast
        img += white * (0.97 - img)

    if kind != "good" and not mask.any():  # a defect too small to cover a pixel: draw again
        return render_cookie(rng, size, kind, difficulty)
    img += 0.028 * (rng.random(img.shape, dtype=_F) - 0.5)  # sensor noise, std 0.008
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(img.transpose(1, 2, 0)), mask
