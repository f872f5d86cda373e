"""Synthetic anomalies made on the fly from normal images, as DRAEM trains on them.

Zavrtanik, Kristan and Skočaj, "DRAEM - A Discriminatively Trained Reconstruction Embedding for
Surface Anomaly Detection", ICCV 2021, Section 3.3: a random 2-D Perlin noise field (Perlin,
"Improving Noise", SIGGRAPH 2002) at a random scale is rotated and thresholded into a blobby mask
M; a texture A is pasted into it with a random opacity beta:

    augmented = (1 - M) * image + (1 - beta) * M * A + beta * M * image

The paper takes A from the DTD texture set; no such set ships here, so A is either another image
of the batch (shuffled, flipped, rotated, shifted and colour-jittered) or procedural multi-octave
Perlin noise. About half of the samples are left unaltered (mask all zero), so the segmentation
network also sees normal images.

Everything is batched torch on the images' device; every random draw comes from `generator`
(the global torch generator when None), so a seed fixes the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anomaly.maps import gaussian_blur

PERLIN_SCALES = (0, 6)  # Perlin resolution 2**k cells per side, k drawn from [0, 6), as DRAEM
THRESHOLD = 0.5  # Perlin values above it form the mask (DRAEM's threshold)
BETA = (0.0, 0.8)  # opacity of the original image inside the mask (DRAEM's range)
P_ANOMALY = 0.5  # fraction of samples that get an anomaly


def _rand(*shape, generator=None, device=None) -> torch.Tensor:
    return torch.rand(*shape, generator=generator).to(device)


def _randint(low: int, high: int, generator=None) -> int:
    return int(torch.randint(low, high, (1,), generator=generator))


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    shape: tuple[int, int], res: tuple[int, int], generator=None, device=None
) -> torch.Tensor:
    """2-D gradient (Perlin) noise [H, W] on res[0] x res[1] lattice cells, values in about [-1, 1].

    Random unit gradients sit on the lattice corners; each pixel blends the dot products of the
    four surrounding gradients with its offsets, using the quintic fade 6t^5 - 15t^4 + 10t^3.
    Any H, W work (they need not be multiples of res).
    """
    (h, w), (ry, rx) = shape, res
    angles = 2 * math.pi * _rand(ry + 1, rx + 1, generator=generator, device=device)
    cos, sin = torch.cos(angles), torch.sin(angles)  # the gradients' two components
    y = torch.arange(h, device=device, dtype=torch.float32) * (ry / h)
    x = torch.arange(w, device=device, dtype=torch.float32) * (rx / w)
    yi, xi = y.floor().long(), x.floor().long()
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]  # broadcast: a column and a row

    def corner(dy: int, dx: int) -> torch.Tensor:
        # the gradient of each pixel's corner, gathered rows then columns (no [H, W] index)
        rows, cols = yi + dy, xi + dx
        gy = cos.index_select(0, rows).index_select(1, cols)
        gx = sin.index_select(0, rows).index_select(1, cols)
        return gy * (fy - dy) + gx * (fx - dx)

    u, v = _fade(fy), _fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), v)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), v)
    return math.sqrt(2) * torch.lerp(top, bottom, u)


def _rotate(maps: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate maps [B, H, W] about their centres (mirror padding, so no empty corners)."""
    theta = degrees * math.pi / 180
    cos, sin, zero = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(affine.to(maps), [maps.shape[0], 1, *maps.shape[-2:]], align_corners=False)
    return F.grid_sample(maps[:, None], grid, padding_mode="reflection", align_corners=False)[:, 0]


def perlin_mask(
    n: int,
    size: tuple[int, int],
    generator=None,
    device=None,
    scales: tuple[int, int] = PERLIN_SCALES,
    threshold: float = THRESHOLD,
    rotate: bool = True,
) -> torch.Tensor:
    """`n` random blob masks [n, H, W] in {0, 1}: Perlin noise, rotated and thresholded.

    Each mask has its own resolution, 2**k x 2**l lattice cells with k, l drawn from
    [scales[0], scales[1]), and its own rotation in [-90, 90] degrees. Some masks come out empty
    (the noise never exceeds the threshold); `synthesize` draws those again.
    """
    noise = torch.stack(
        [
            perlin_noise(
                size,
                (2 ** _randint(*scales, generator), 2 ** _randint(*scales, generator)),
                generator,
                device,
            )
            for _ in range(n)
        ]
    )
    if rotate:
        noise = _rotate(noise, _rand(n, generator=generator, device=device) * 180 - 90)
    return (noise > threshold).float()


def fractal_texture(
    n: int, channels: int, size: tuple[int, int], generator=None, device=None, octaves: int = 3
) -> torch.Tensor:
    """Procedural textures [n, C, H, W] in [0, 1]: multi-octave Perlin noise, one field per channel,
    at a random base scale, stretched to a random intensity range."""
    out = torch.empty(n, channels, *size, device=device)
    for i in range(n):
        base = _randint(1, 5, generator)
        for c in range(channels):
            field = sum(
                perlin_noise(size, (2 ** (base + o),) * 2, generator, device) / 2**o
                for o in range(octaves)
            )
            lo, hi = field.min(), field.max()
            out[i, c] = (field - lo) / (hi - lo + 1e-8)
    lo = _rand(n, 1, 1, 1, generator=generator, device=device) * 0.5
    hi = lo + 0.3 + _rand(n, 1, 1, 1, generator=generator, device=device) * (1 - lo - 0.3)
    return lo + (hi - lo) * out


def image_texture(images: torch.Tensor, generator=None) -> torch.Tensor:
    """Textures [B, C, H, W] cut from the batch itself: for each image another one (a random
    derangement when B > 1), randomly flipped, rotated by a multiple of 90 degrees, shifted, and
    colour-jittered (contrast, brightness, gamma, sometimes inverted; channels shuffled for RGB)."""
    b, c, h, w = images.shape
    dev = images.device
    order = torch.arange(b)
    if b > 1:  # a shift by 1..b-1 of a random permutation: never the image itself
        perm = torch.randperm(b, generator=generator)
        order = torch.empty(b, dtype=torch.long)
        order[perm] = perm.roll(_randint(1, b, generator))
    out = []
    for i in range(b):
        t = images[int(order[i])]
        if _randint(0, 2, generator):
            t = t.flip(-1)
        if _randint(0, 2, generator):
            t = t.flip(-2)
        if h == w:
            t = t.rot90(_randint(0, 4, generator), dims=(-2, -1))
        t = t.roll((_randint(0, h, generator), _randint(0, w, generator)), dims=(-2, -1))
        if c > 1:
            t = t[torch.randperm(c, generator=generator).to(dev)]
        out.append(t)
    t = torch.stack(out)
    out.clear()
    r = _rand(b, 4, generator=generator, device=dev)
    mean = t.mean(dim=(1, 2, 3), keepdim=True)
    contrast, brightness = 0.5 + 1.5 * r[:, 0], 0.4 * r[:, 1] - 0.2
    # in place, in the order (t - mean) * contrast + mean + brightness: one batch in memory
    t.sub_(mean).mul_(contrast.view(-1, 1, 1, 1)).add_(mean).add_(brightness.view(-1, 1, 1, 1))
    gamma = torch.exp((r[:, 2] - 0.5) * 1.4).view(-1, 1, 1, 1)  # 0.5 .. 2
    t.clamp_(0, 1).pow_(gamma)
    invert = (r[:, 3] < 0.25).nonzero().flatten().to(dev)
    t[invert] = 1 - t[invert]
    return t


def synthesize(
    images: torch.Tensor,
    generator=None,
    p_anomaly: float = P_ANOMALY,
    beta: tuple[float, float] = BETA,
    p_self_texture: float = 0.5,
    scales: tuple[int, int] = PERLIN_SCALES,
    threshold: float = THRESHOLD,
    retries: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste synthetic anomalies into some images of a batch.

    Args:
        images: normal images [B, C, H, W] in [0, 1].
        generator: torch.Generator for every random draw (None = the global one).
        p_anomaly: probability that a sample gets an anomaly; the others keep a zero mask.
        beta: range of the opacity of the original image inside the mask (0 = texture only).
        p_self_texture: probability that the texture is another image of the batch rather than
            procedural Perlin noise (always procedural when B == 1).
        scales, threshold: of the Perlin masks, see `perlin_mask`.
        retries: masks that come out empty are drawn again up to this many times.

    Returns:
        (augmented images [B, C, H, W], masks [B, H, W] in {0, 1}). Where the mask is 0 the
        augmented image equals the input exactly.
    """
    b, c, h, w = images.shape
    dev = images.device
    anomalous = _rand(b, generator=generator) < p_anomaly
    masks = torch.zeros(b, h, w, device=dev)
    todo = anomalous.nonzero().flatten()
    for _ in range(retries + 1):
        if len(todo) == 0:
            break
        rows = todo.to(dev)
        masks[rows] = perlin_mask(len(todo), (h, w), generator, dev, scales, threshold)
        todo = todo[masks[rows].flatten(1).amax(dim=1).cpu() == 0]
    use_self = (_rand(b, generator=generator) < p_self_texture) & (b > 1)
    opacity = beta[0] + (beta[1] - beta[0]) * _rand(b, 1, 1, 1, generator=generator, device=dev)
    texture = torch.zeros_like(images)
    self_rows = (anomalous & use_self).nonzero().flatten().to(dev)
    if len(self_rows):
        texture[self_rows] = image_texture(images, generator)[self_rows]
    noise_rows = (anomalous & ~use_self).nonzero().flatten().to(dev)
    if len(noise_rows):
        texture[noise_rows] = fractal_texture(len(noise_rows), c, (h, w), generator, dev)
    m = masks[:, None]
    blended = texture.mul_(1 - opacity).add_(opacity * images)  # in place: fewer batch copies
    augmented = torch.where(m > 0, blended, images, out=blended)
    return augmented, masks


# --- quiet local alterations, for `auto` ------------------------------------------------------
ALTERATIONS = ("blur", "shift", "faint")
RADIUS = (0.03, 0.15)  # a region's radius as a fraction of the image side (log-uniform)
MIN_VISIBLE = 0.02  # mean absolute change inside a mask below which it is dropped (in [0, 1])


def local_mask(n: int, size: tuple[int, int], generator=None, device=None) -> torch.Tensor:
    """`n` soft masks [n, H, W] in [0, 1], each one small irregular region: a disc of radius
    drawn from `RADIUS` (log-uniform) whose outline Perlin noise wobbles by up to about half, with
    a 1-2 px soft edge, centred anywhere at least half a radius inside the image."""
    h, w = size
    side = min(h, w)
    lo, hi = math.log(RADIUS[0]), math.log(RADIUS[1])
    yy = torch.arange(h, device=device, dtype=torch.float32)[:, None] + 0.5
    xx = torch.arange(w, device=device, dtype=torch.float32)[None, :] + 0.5
    out = torch.empty(n, h, w, device=device)
    for i in range(n):
        r = side * math.exp(lo + (hi - lo) * float(_rand(1, generator=generator)))
        cy = r / 2 + (h - r) * float(_rand(1, generator=generator))
        cx = r / 2 + (w - r) * float(_rand(1, generator=generator))
        cells = max(1, round(side / (2 * r)))
        wobble = 0.6 * perlin_noise((h, w), (cells, cells), generator, device)
        dist = torch.hypot(yy - cy, xx - cx) / r - 1 - wobble  # < 0 inside
        edge = (1 + float(_rand(1, generator=generator))) / r
        out[i] = (0.5 - dist / edge).clamp(0, 1)
    return out


def alter(
    images: torch.Tensor, generator=None, kinds: tuple[str, ...] = ALTERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quiet local defects, one per image: what DRAEM's pasted textures are not.

    Each image gets one small region (`local_mask`) and one of `kinds`, drawn in turn:

    - `blur`: the region out of focus (Gaussian, sigma 1-2 % of the image side);
    - `shift`: a stain or discolouration: each channel's gain 0.75-1.25 and an offset of
      0.04-0.12, all brighter or all darker (one gain and offset for all channels of a
      greyscale image, half the time for colour);
    - `faint`: another image's texture (`image_texture`) at 15-40 % opacity.

    A region whose change is below `MIN_VISIBLE` (a blur of a flat patch) is left out: its
    image is returned unaltered with an empty mask, so callers drop it.

    Returns:
        (altered images [B, C, H, W], masks [B, H, W] in {0, 1}, the soft region >= 0.5).
    """
    unknown = set(kinds) - set(ALTERATIONS)
    if unknown or not kinds:
        raise ValueError(f"unknown alteration(s) {sorted(unknown)}; choose from {ALTERATIONS}")
    b, c, h, w = images.shape
    dev = images.device
    soft = local_mask(b, (h, w), generator, dev)[:, None]
    textures = image_texture(images, generator) if b > 1 else torch.flip(images, (-1,))
    out = images.clone()
    masks = (soft[:, 0] >= 0.5).float()
    for i in range(b):
        kind = kinds[i % len(kinds)]
        r = _rand(2 * c + 2, generator=generator, device=dev)
        if kind == "blur":
            changed = gaussian_blur(images[i], (0.01 + 0.01 * float(r[0])) * min(h, w))
        elif kind == "shift":
            n = 1 if c == 1 or r[-1] < 0.5 else c
            gain = (0.75 + 0.5 * r[:n]).view(-1, 1, 1)
            sign = 1.0 if float(r[-2]) < 0.5 else -1.0
            offset = (sign * (0.04 + 0.08 * r[c : c + n])).view(-1, 1, 1)
            changed = images[i] * gain + offset
        else:  # faint
            opacity = 0.15 + 0.25 * float(r[0])
            changed = (1 - opacity) * images[i] + opacity * textures[i]
        out[i] = (images[i] + soft[i] * (changed.clamp(0, 1) - images[i])).clamp(0, 1)
        change = (out[i] - images[i]).abs().mean(0)[masks[i] > 0]
        if change.numel() == 0 or float(change.mean()) < MIN_VISIBLE:
            out[i], masks[i] = images[i], 0
    return out, masks
