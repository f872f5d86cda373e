"""The one picture of a verdict: evidence painted on the image, on a scale anchored to the run.

Every overlay the project makes (`score`'s `overlays/`, `predict`, the explorer's gallery and
report, the notebooks) uses the same `EvidenceScale`: an anomaly-map value v is read as
evidence e = (v - floor) / (pixel_threshold - floor), where `floor` is a typical value of good
images' maps and `pixel_threshold` the run's saved pixel threshold. So e = 1 is the pixel
threshold in every image of every run, and the same colour means the same evidence:

    e < 0.75      nothing painted (what good parts look like)
    0.75 <= e < 1 a faint yellow wash: raised, but below the pixel threshold
    e >= 1        red, deeper up to e = 2: above the pixel threshold

The colour bar under an `annotated_overlay` shows this scale with the threshold marked in the
middle; the header says the verdict (PASS / REJECT), the image score and the image threshold.
The ground-truth defect, when known, is outlined in one colour (`viz.OUTLINE`) on a dark ring
(seen by colour-blind eyes too, on the yellow wash as on the image). Overlays are
at the image's own resolution: the map is resized to the image, not the image to the map (an
image over `OVERLAY_SIDE` pixels on its longer side is shrunk to it first).

Vocabulary, everywhere: good / defective for what a part is, PASS / REJECT for the verdict.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anomaly.data.files import named
from anomaly.data.image_kind import read_rgb
from anomaly.prefetch import in_threads
from anomaly.runs import RunDir
from anomaly.safe_files import atomic_bytes, fitting_name, output_folder, write_json
from anomaly.terminal import printable
from anomaly.viz import OUTLINE, to_rgb
from anomaly.written_files import marked_overlay, overlay_mark, remove_written

PASS, REJECT = "PASS", "REJECT"
GOOD, DEFECTIVE = "good", "defective"
YELLOW = np.array([255, 214, 0], np.float32)
RED_LOW = np.array([255, 30, 0], np.float32)  # at the pixel threshold
RED_HIGH = np.array([190, 0, 0], np.float32)  # at twice the threshold's evidence
# the evidence a part that passes is drawn with at most: the strongest yellow, just below red
BELOW_RED = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
PASS_COLOUR, REJECT_COLOUR = (46, 125, 50), (198, 40, 40)
WRITTEN = RunDir.OVERLAYS_WRITTEN  # in overlays/: what `save_overlays` wrote, by SHA-256


def verdict(score: float, threshold: float) -> str:
    """PASS or REJECT: a part passes only if its score is below the threshold, so a score that
    is not a number (a broken model) is rejected, never passed."""
    return PASS if float(score) < float(threshold) else REJECT


@dataclass(frozen=True)
class EvidenceScale:
    """Map values -> evidence: `floor` is evidence 0, `pixel_threshold` evidence 1."""

    floor: float
    pixel_threshold: float

    def __post_init__(self) -> None:
        if not np.isfinite([self.floor, self.pixel_threshold]).all():
            raise ValueError(f"EvidenceScale needs finite values, got {self}")
        # a gap relative to the maps' own scale (a model's maps of 1e-8 keep theirs), so that
        # evidence of float32 maps stays finite
        span = max(abs(self.floor), abs(self.pixel_threshold), 1e-20) * 1e-6
        if self.pixel_threshold - self.floor < span:
            object.__setattr__(self, "pixel_threshold", self.floor + span)

    def evidence(self, amap) -> np.ndarray:
        amap = np.asarray(amap, np.float32)
        return (amap - self.floor) / (self.pixel_threshold - self.floor)

    @classmethod
    def from_maps(cls, maps, labels=None, q: float = 0.999) -> EvidenceScale:
        """From good images' maps: floor at their median pixel, threshold at their q-quantile."""
        maps = np.asarray(maps, np.float32)
        if labels is not None and np.any(np.asarray(labels) == 0):
            maps = maps[np.asarray(labels) == 0]
        flat = maps.ravel()[:: max(1, maps.size // 2_000_000)]
        floor, top = (float(v) for v in np.quantile(flat, (0.5, q)))
        return cls(floor, top)


def run_scale(run: str | Path | RunDir, maps=None, labels=None) -> EvidenceScale:
    """The evidence scale of a run folder.

    The pixel threshold is the one saved in threshold.json (`params.pixel_threshold`, set by
    the explorer, or by `threshold --good-images` from that folder's maps, as train's from the
    held-out ones) or else the upper end of the held-out good images' map range
    (val_scores.json, written by train: their 99.9 % quantile); the floor is the lower end of
    that range: their median pixel, what "typical good" on the colour bar says (a run whose
    val_scores.json has no map_range_q saved their 1 % quantile there, and its overlays wash
    about a fifth of a good cookie yellow: train it again, `train --like`, for the median).
    Without val_scores.json, `maps` (and `labels`) give the scale.
    """
    rd = run if isinstance(run, RunDir) else RunDir(run)
    saved = rd.threshold().params.get("pixel_threshold") if rd.has_threshold() else None
    if rd.file(rd.VAL_SCORES).exists():
        lo, hi = rd.map_range()
        return EvidenceScale(lo, float(saved) if saved is not None else hi)
    if maps is None:
        raise FileNotFoundError(
            f"{rd.path} has no {rd.VAL_SCORES} (written by train): "
            "retrain the run, or pass its maps to set the overlay scale"
        )
    scale = EvidenceScale.from_maps(maps, labels)
    return EvidenceScale(scale.floor, float(saved)) if saved is not None else scale


def evidence_rgba(evidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The colour [H, W, 3] (0..255) and opacity [H, W] (0..1) of evidence values."""
    e = np.asarray(evidence, np.float32)
    alpha = 0.4 * np.clip((e - 0.75) / 0.25, 0.0, 1.0)  # 0 at e = 0.75, 0.4 at e = 1
    colour = np.broadcast_to(YELLOW, (*e.shape, 3)).copy()
    above = e >= 1.0  # red, the few pixels past the threshold: computed there only
    if above.any():
        high = np.clip(e[above] - 1.0, 0.0, 1.0)[:, None]  # 0 at e = 1, 1 at e = 2
        colour[above] = (1 - high) * RED_LOW + high * RED_HIGH
        alpha[above] = 0.65 + 0.2 * high[:, 0]
    return colour, alpha


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W)."""
    amap = np.asarray(amap, np.float32)
    if amap.shape == tuple(size):
        return amap
    im = Image.fromarray(amap, mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, np.float32)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (the mask minus its 4-neighbour erosion)."""
    m = np.asarray(mask) > 0
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


OVERLAY_SIDE = 4096  # an overlay's longer side at most: a larger image is shown shrunk


def overlay_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) an overlay of an image of this size has: its own, or shrunk to
    `OVERLAY_SIDE` on its longer side (a line-scan frame of 16000 px would take gigabytes of
    memory to paint, and a file no viewer opens)."""
    k = OVERLAY_SIDE / max(height, width, 1)
    return (height, width) if k >= 1 else (max(1, round(height * k)), max(1, round(width * k)))


def evidence_overlay(
    image, amap, scale: EvidenceScale, mask=None, passed: bool = False
) -> np.ndarray:
    """The image at its own resolution (up to `OVERLAY_SIDE`) with the map's evidence painted
    on it (uint8 RGB). Red marks what rejects a part: on one that `passed` its image threshold,
    pixels above the pixel threshold (about 1 in 1,000 of a good image's, by its definition)
    are drawn in the strongest yellow instead.

    Args:
        image: the input image (any layout `viz.to_rgb` takes), at any size.
        amap: the anomaly map [h, w]; resized to the image.
        scale: the run's `EvidenceScale`.
        mask: optional ground-truth mask (any size); its boundary is drawn in `viz.OUTLINE`.
        passed: the image's score is below the image threshold (PASS).
    """
    rgb = to_rgb(image)
    if (small := overlay_size(*rgb.shape[:2])) != rgb.shape[:2]:  # a very large image: shrunk
        rgb = (
            np.asarray(
                Image.fromarray(np.round(rgb * 255).astype(np.uint8)).resize(
                    (small[1], small[0]), Image.BILINEAR, reducing_gap=3.0
                ),
                np.float32,
            )
            / 255.0
        )
    rgb = rgb * 255.0
    size = rgb.shape[:2]
    evidence = scale.evidence(_resize_map(amap, size))
    colour, alpha = evidence_rgba(np.minimum(evidence, BELOW_RED) if passed else evidence)
    out, painted = rgb, alpha != 0  # elsewhere the blend gives the image's pixel itself
    a = alpha[painted][:, None]
    out[painted] = (1 - a) * rgb[painted] + a * colour[painted]
    if mask is not None and np.any(mask):
        m = np.asarray(mask, np.float32)
        if m.shape != size:
            m = _resize_map(m, size)
        inside = m >= 0.5  # lime on a dark ring: under deuteranopia lime is the yellow wash's
        p = np.pad(inside, 1)  # colour, and the ring's contrast keeps it seen
        grown = inside | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
        out[grown & ~inside] = (30, 30, 30)
        out[mask_outline(inside)] = OUTLINE
    return np.round(np.nan_to_num(out).clip(0, 255)).astype(np.uint8)  # a broken map: black


def strong_red_fraction(rgb: np.ndarray) -> float:
    """The fraction of pixels painted strongly red (what evidence >= 1 looks like)."""
    rgb = np.asarray(rgb).astype(np.int32)
    red = (rgb[..., 0] >= 150) & (rgb[..., 1] <= 90) & (rgb[..., 2] <= 90)
    return float(red.mean())


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=8)  # the same for every overlay of a run: drawn once (read-only)
def colour_bar(width: int, scale: EvidenceScale, height: int | None = None) -> np.ndarray:
    """The evidence scale as a horizontal bar with its labels (uint8 RGB, `width` wide)."""
    fs = max(9, min(14, width // 22), width // 90)  # readable in a camera-sized picture
    bar_h = max(6, fs - 2)
    height = height or bar_h + 2 * fs + 12
    e = np.linspace(0.0, 2.0, width, dtype=np.float32)[None].repeat(bar_h, 0)
    colour, alpha = evidence_rgba(e)
    paper = np.full((bar_h, width, 3), 235.0, np.float32)  # what an unpainted pixel shows over
    bar = (1 - alpha[..., None]) * paper + alpha[..., None] * colour
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(bar.astype(np.uint8)), (0, 2))
    draw = ImageDraw.Draw(canvas)
    mid = width // 2
    draw.line([(mid, 0), (mid, bar_h + 4)], fill=(0, 0, 0), width=1)
    font = _font(fs)
    y = bar_h + 5
    draw.text((2, y), "typical good", fill=(90, 90, 90), font=font)
    label = f"pixel threshold {scale.pixel_threshold:.3g}"
    w = draw.textlength(label, font=font)
    draw.text(
        (max(mid - w / 2, 2), y + (fs + 1 if w > width / 3 else 0)),
        label,
        fill=(0, 0, 0),
        font=font,
    )
    top = f"{scale.floor + 2 * (scale.pixel_threshold - scale.floor):.3g}"  # evidence 2
    draw.text((width - draw.textlength(top, font=font) - 2, y), top, fill=(90, 90, 90), font=font)
    bar = np.array(canvas)
    bar.setflags(write=False)
    return bar


def annotated_overlay(
    image,
    amap,
    scale: EvidenceScale,
    score: float,
    threshold: float,
    mask=None,
    title: str | None = None,
) -> np.ndarray:
    """`evidence_overlay` with the verdict and score written above and the colour bar below
    (and, beside a `title`, the share of a passing image's map over the pixel threshold when
    more than a good part's 1 in 1,000: drawn yellow, as a part that passes never shows red).

    An image narrower than `MIN_WIDTH` is enlarged by a whole factor (each pixel a square
    block), so that the words stay readable; `body_rows` says where the picture is.
    """
    word = verdict(score, threshold)
    body = evidence_overlay(image, amap, scale, mask, passed=word == PASS)
    k = enlargement(body.shape[1], body.shape[0])
    body = body.repeat(k, axis=0).repeat(k, axis=1)
    width = body.shape[1]
    fs = _font_size(width)
    head_h = _head_height(width, title)
    head = Image.new("RGB", (width, head_h), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    draw.text((4, 3), word, fill=REJECT_COLOUR if word == REJECT else PASS_COLOUR, font=_font(fs))
    op = ">=" if word == REJECT else "<"
    text = f"score {_apart(score, threshold)} {op} {_apart(threshold, score)}"
    x, small = 4 + draw.textlength(word + "  ", font=_font(fs)), fs - 3
    while small > 8 and x + draw.textlength(text, font=_font(small)) > width - 3:
        small -= 1  # long numbers (a score and threshold alike to 6 digits) kept whole
    draw.text((x, 3 + fs // 5 + (fs - 3 - small) // 2), text, fill=(0, 0, 0), font=_font(small))
    if title:
        lines = [printable(title)]  # a file name's newline: one line, and measurable
        over = float(np.mean(np.asarray(amap, np.float32) >= scale.pixel_threshold))
        if word == PASS and over > 0.001:  # yellow, never red: more than a good part's 1/1000
            lines.append(f"{over:.2%} of its map over pixel thr. (yellow)")  # a line of its own:
        for i, line in enumerate(lines):  # beside the name it was shrunk to 8 px at 256 px
            small = fs - 3
            while small > 8 and 4 + draw.textlength(line, font=_font(small)) > width - 3:
                small -= 1
            draw.text((4, fs + 7 + i * (fs + 2)), line, fill=(90, 90, 90), font=_font(small))
    return np.concatenate([np.asarray(head), body, colour_bar(width, scale)], axis=0)


def _apart(x: float, other: float) -> str:
    """`x` to 4 significant digits, or as many more as tell it from `other` (a score just
    above its threshold read "score 8.085 >= 8.085")."""
    digits = next((d for d in range(4, 10) if f"{x:.{d}g}" != f"{other:.{d}g}"), 10)
    return f"{x:.{digits}g}"


MIN_WIDTH = 256  # annotated overlays are at least this wide
PNG_LEVEL = 1  # zlib level of overlay files: a third of the default 6's time, 10 % larger


def png_bytes(picture: np.ndarray, pnginfo=None) -> bytes:
    """An overlay `picture` (uint8 RGB) as the bytes of its PNG file (at `PNG_LEVEL`; `pnginfo`:
    text chunks, such as `overlay_mark()`)."""
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG", compress_level=PNG_LEVEL, pnginfo=pnginfo)
    return out.getvalue()


def enlargement(width: int, height: int) -> int:
    """The whole factor that makes an image of this width at least MIN_WIDTH wide, short of
    taking its height past `OVERLAY_SIDE` (a line-scan strip of 32 x 30000 px: 262,000 rows)."""
    return max(1, min(-(-MIN_WIDTH // max(1, width)), OVERLAY_SIDE // max(1, height)))


def _font_size(width: int) -> int:  # a 4000 px overlay seen whole: not 4 px letters
    return max(10, min(18, width // 16), width // 60)


def _head_height(width: int, title: str | None) -> int:
    fs = _font_size(width)
    return fs + 10 + (2 * (fs + 2) if title else 0)  # the name, and a passing map's share red


def body_rows(image_shape: tuple[int, ...], title: str | None = None) -> slice:
    """The rows of an `annotated_overlay` of an image of this shape that hold the picture."""
    shown = overlay_size(*image_shape[:2])  # a very large image is drawn shrunk
    k = enlargement(shown[1], shown[0])
    head = _head_height(shown[1] * k, title)
    return slice(head, head + shown[0] * k)


def overlay_name(path: str, defect: str | None = None) -> str:
    """File name of an image's overlay: `<defect>_<stem>.png` (or `<stem>.png`)."""
    stem = Path(path).stem
    return fitting_name(f"{defect}_{stem}.png" if defect else f"{stem}.png")  # a long stem: cut


def prediction_overlay(
    pred, i: int, image: np.ndarray, scale: EvidenceScale, threshold: float
) -> np.ndarray:
    """The `annotated_overlay` of image `i` of a `Predictions`: its map, score and (when the
    predictions have masks) true defect outline, titled `<defect> / <file name>`."""
    return annotated_overlay(
        image,
        pred.maps[i],
        scale,
        float(pred.scores[i]),
        threshold,
        mask=pred.masks[i] if pred.masks is not None else None,
        title=f"{pred.defects[i]} / {Path(pred.paths[i]).name}",
    )


def save_overlays(
    pred,
    out_dir: str | Path,
    scale: EvidenceScale,
    threshold: float,
    images=None,
    draft: int | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write one `annotated_overlay` PNG per image of a `Predictions`, `<defect>_<stem>.png`
    (with a progress bar when `progress`: at camera sizes they take longer than predicting).

    Images come from `images` (any layout, any size) or else from `pred.paths` at their own
    resolution (a JPEG at the run's decoding with `draft`, `image_kind.draft_size`); masks (when the predictions have them) are outlined. Two images with the same
    defect and stem from different folders get distinct names (`..._<index>.png`).

    The overlays an earlier call wrote in `out_dir` are removed first (they showed other images
    or another model), and only those: `out_dir/.written.json` lists them with their SHA-256,
    and a file it does not list, or one changed since, is the user's and stays (a new overlay
    of its name gets the `..._<index>.png` name instead).
    """
    out_dir = output_folder(out_dir)
    kept = set(remove_written(out_dir, WRITTEN, marked_overlay, keep_folder=True))  # user's stay
    seen, names, taken = set(kept), [], []
    for i, (path, defect) in enumerate(zip(pred.paths, pred.defects)):
        name = overlay_name(path, defect)
        stem, k = Path(name).stem, 2
        taken += [name] * (name in kept)
        if name in seen:  # the same defect and stem from another folder, or a file of the user's
            name = f"{stem}_{i}.png"
        while name in seen:  # that name is a file of the user's too
            name, k = f"{stem}_{i}_{k}.png", k + 1
        seen.add(name)
        names.append(name)
    record: dict[str, str | None] = dict.fromkeys(names)  # None: written, or being written
    write_json(out_dir / WRITTEN, record)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(names), desc="overlays", unit="img", disable=not progress, leave=False)

    def write(i: int) -> str:
        image = images[i] if images is not None else read_rgb(pred.paths[i], draft)
        if image is None:  # the file went away: show the map's size in grey
            image = np.full(pred.maps.shape[1:], 0.5, np.float32)
        data = png_bytes(prediction_overlay(pred, i, image, scale, threshold), overlay_mark())
        atomic_bytes(data, out_dir / names[i])  # a link there is replaced, never followed
        bar.update()
        return hashlib.sha256(data).hexdigest()

    # one image per core at a time: decoding, painting and PNG encoding run outside Python's lock
    with bar:
        record.update(zip(names, in_threads(write, range(len(names)))))
    write_json(out_dir / WRITTEN, record)
    if taken:  # the plain names show what is kept: an older version's pictures (upgrade)
        warnings.warn(
            f"{out_dir}: {len(taken)} overlay name{'s are' if len(taken) > 1 else ' is'} taken "
            "by files `score` did not write "
            f"there ({named(taken, 3)}: an older version's pictures, or yours), which are kept; "
            "today's are written beside them as <name>_<index>.png. Move those files away to "
            "have today's under their own names",
            stacklevel=2,
        )
    return [out_dir / name for name in names]
