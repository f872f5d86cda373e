"""What a detector is given from Python, checked where a mistake would otherwise score without a
word or fail deep inside torch: a batch that is not float pixels in [0, 1] at the run's size and
channels (uint8 or 0-255 values scored about ten times too high; a channels-last or unbatched
tensor read as another shape), a data set made at another size, channels or decoding than the
run's, and something that is no data set at all (an array, a path, a PIL image). Each error
says what the detector takes and how to get it.

`Detector` calls these (`anomaly.detectors.base`): `check_batch` before the own `predict_batch`
of each of this package's detectors (a subclass of one's own where it calls theirs; not while
`anomaly.export` traces, inside `unchecked()`, nor in a call nested in a checked one, as auto's
of its choice), `check_data` at every detector's `predict` and at this package's detectors'
`fit`. Only an `AnomalyDataset` is compared with the run's settings, and its decoding only where
it changes a JPEG (sides of at least 4x the run's size).
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np
import torch

# pixel values a little outside [0, 1] (a bicubic resize's overshoot) pass, as an export's do
from anomaly.onnx_checks import RANGE_SLACK

FILES = "for image files use anomaly.predict_images(RUN, files)"
# 16-bit pixels are read from files divided by 65535, whatever the camera filled of them (12-bit
# data too: dividing it by 4095 would make it 16 times brighter than the files the run read)
_SIXTEEN = "images.float() / 65535 for 16-bit pixels, as files are read (12-bit data in them too)"
_OFF = threading.local()


def checking() -> bool:
    """Whether `predict_batch` checks its input now: not while `anomaly.export` traces it (the
    checks would be traced as constants), inside `unchecked()`, nor inside a checked call (a
    detector's own call of another's, as auto's of its choice's: checked once, on entry)."""
    return not (torch.jit.is_tracing() or getattr(_OFF, "depth", 0))


@contextlib.contextmanager
def unchecked():
    """Call `predict_batch` without the checks in this thread: `anomaly.build`'s probe of which
    sizes a network takes runs an untrained one at sizes other than the run's."""
    _OFF.depth = getattr(_OFF, "depth", 0) + 1
    try:
        yield
    finally:
        _OFF.depth -= 1


def check_batch(config, images, name: str) -> None:
    """ValueError or TypeError, with the fix, unless `images` is a float tensor [B, C, H, W] of
    finite values in [0, 1] (to `RANGE_SLACK`) at the run's channels and size."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{name}.predict_batch takes a float tensor [B, C, H, W] of pixel values in [0, 1], "
            f"not {type(images).__name__}; {FILES}, or detector.predict(detector.dataset(ROOT))"
        )
    c, s = int(config.channels), int(config.size)
    want, got = (c, s, s), tuple(images.shape)
    if images.ndim != 4 or got[1:] != want:
        raise ValueError(
            f"{name} takes a batch [B, {c}, {s}, {s}] (images, channels, height, width: the "
            f"run's --size and --channels); got {list(got)}{_shape_hint(got, want)}"
        )
    if got[0] == 0:
        raise ValueError(f"{name}.predict_batch got an empty batch (0 images)")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} takes pixel values as floats in [0, 1]; got {images.dtype}: use "
            + (
                "images.float() / 255"
                if images.dtype == torch.uint8
                else f"images.float() / 255 for 8-bit values, {_SIXTEEN}"
            )
        )
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if lo >= -RANGE_SLACK and hi <= 1 + RANGE_SLACK:  # NaN fails both
        return
    bad = int(images.numel() - torch.isfinite(images).sum())
    if bad:
        raise ValueError(
            f"{name}.predict_batch: {bad} of the batch's {images.numel()} pixel values are NaN "
            "or infinite; check how the images were made"
        )
    raise ValueError(
        f"{name} takes pixel values in [0, 1]; these run from {lo:.4g} to {hi:.4g}: divide "
        "0-255 values by 255 and 16-bit ones by 65535 (as files are read; 12-bit data in 16-bit "
        "files too), and leave out any normalisation (mean and std): the detector does its own"
    )


def _shape_hint(got: tuple, want: tuple) -> str:
    c, s, _ = want
    if got == want:
        return ": one image without its batch dimension, use images[None]"
    if len(got) == 4 and got[1:] == (s, s, c):
        return ": channels last, use images.permute(0, 3, 1, 2)"
    if len(got) == 3 and got == (s, s, c):
        return ": one image, channels last, use images.permute(2, 0, 1)[None]"
    if len(got) == 4 and got[1] == c:
        return f": resize to {s} x {s} (detector.dataset(ROOT) reads files at the run's size)"
    if len(got) == 4 and got[1] in (1, 3):
        return f": the run takes {c} channel{'s' * (c != 1)} (detector.dataset(ROOT) converts)"
    return ""


def check_data(config, data, name: str, call: str) -> None:
    """TypeError unless `data` is a data set or loader (what `call`, predict or fit, takes),
    naming what to use instead; ValueError for an `AnomalyDataset`-like one made at another size,
    channels or decoding than the run's (it would score at the wrong size without a word)."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        raise TypeError(
            f"{name}.{call} takes a data set, not the path {str(data)!r}: "
            f"{call}(detector.dataset(ROOT, {'train' if call == 'fit' else 'test'!r})) reads the "
            "data set whose folder ROOT holds "
            f"train/ and test/ (or good/) at the run's settings; {FILES}"
        )
    if isinstance(data, torch.Tensor) or type(data).__module__.split(".")[0] in ("numpy", "PIL"):
        raise TypeError(
            f"{name}.{call} takes a data set, not a {type(data).__name__}; for a batch of "
            f"images as a float tensor [B, C, H, W] in [0, 1] use predict_batch; {FILES}"
        )
    if not isinstance(data, (Dataset, DataLoader)) and not (
        hasattr(data, "__iter__") or hasattr(data, "__getitem__")
    ):
        raise TypeError(
            f"{name}.{call} takes a data set (anomaly.AnomalyDataset, or detector.dataset"
            f"(ROOT)) or a DataLoader of its items, not {type(data).__name__}"
        )
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], dict):
        raise TypeError(
            f"{name}.{call} takes a data set, not a {type(data).__name__} of "
            f"{type(data[0]).__name__}; {FILES}, or use detector.dataset(ROOT)"
        )
    from anomaly.data import AnomalyDataset

    if not isinstance(data, AnomalyDataset):  # another data set's `size` may be anything
        return
    if call == "fit" and (bad := sum(s.label > 0 for s in data.samples)):
        warnings.warn(
            f"{name}.fit got {bad} defective image{'s' * (bad != 1)} among its "
            f"{len(data)}: a detector learns normal from good images only, and these will "
            "score as normal; fit on the 'train' split (train/good, or good/)",
            stacklevel=4,
        )
    differ = [
        f"{key} {getattr(data, key)!r} (the run's {getattr(config, key)!r})"
        for key in ("size", "channels", "decode")
        if getattr(data, key) != getattr(config, key, getattr(data, key))
    ]
    if differ and differ[-1].startswith("decode") and not _drafted(data, int(config.size)):
        differ.pop()  # decoding differs only for JPEG files of at least 4x the run's size
    if differ:
        raise ValueError(
            f"{name}.{call}: the data set was made with {', '.join(differ)}, so its images are "
            "not what the run learned; make it with detector.dataset(ROOT, split), which takes "
            "the run's size, channels and decoding"
        )


def _drafted(data, size: int) -> bool:
    """Whether `decode` changes any image of the data set: a JPEG file whose sides are at least
    four times `size` (draft decoding asks for twice it, `anomaly.data.image_kind.draft_size`,
    and halves a JPEG only where that leaves as much); read from the files' headers, True where
    one cannot be read."""
    from PIL import Image

    from anomaly.data.image_kind import draft_size

    halved = 2 * draft_size("draft", size)  # PIL's draft halves a JPEG only to at least that
    for path in data.paths:
        if not str(path).lower().endswith((".jpg", ".jpeg")):
            continue
        try:
            with Image.open(path) as im:
                if min(im.size) >= halved:
                    return True
        except OSError:
            return True
    return False


def empty_frame(x: torch.Tensor) -> bool:
    """Whether image `x` [C, H, W] is one flat colour (`onnx_checks.flat_image`: an empty frame,
    which predict gives no verdict), at the model's size (predict looks at the file's own: a
    pattern finer than a model pixel can be flat here alone). `score` names these, calibration
    refuses them. A cheap look first: whether half of every 16th pixel is their median colour,
    which a flat frame's always is (its few other pixels are 1.6 % of those at most)."""
    from anomaly.onnx_checks import SAME, flat_image

    x = x.detach()
    # numpy: torch's small operations cost ~2 ms here; only the 16th copied (from a GPU too)
    every = x[:, ::4, ::4].float().cpu().numpy().reshape(x.shape[0], -1)
    if (abs(every - np.median(every, axis=1, keepdims=True)) <= SAME).all(0).mean() < 0.5:
        return False
    return flat_image(x.float().cpu().numpy().transpose(1, 2, 0)) is not None


@contextlib.contextmanager
def frames_named():
    """`predict_batch` without its empty-frame warning in this thread: `Detector.predict` names
    the flat images itself, by file."""
    _OFF.frames = getattr(_OFF, "frames", 0) + 1
    try:
        yield
    finally:
        _OFF.frames -= 1


def naming_frames() -> bool:
    """Whether a caller up this thread's stack names empty frames itself (`frames_named`)."""
    return bool(getattr(_OFF, "frames", 0))


def warn_empty_frames(images: torch.Tensor) -> None:
    """Warn of the images of a batch [B, C, H, W] that are one flat colour (`empty_frame`): a
    service scoring uploads with `predict_batch` got a score, often under the threshold, for a
    blank frame, which `predict` gives no verdict (0.06 ms an image)."""
    if naming_frames():
        return
    flat = [i for i, x in enumerate(images) if empty_frame(x)]
    if flat:
        warnings.warn(
            f"predict_batch: image{'s' * (len(flat) > 1)} {', '.join(map(str, flat[:5]))}"
            f"{' ...' * (len(flat) > 5)} of the batch of {len(images)} "
            f"{'is' if len(flat) == 1 else 'are'} all one flat colour: empty frames, with "
            "nothing to inspect; `predict` gives them no verdict, and their scores here mean "
            "nothing",
            stacklevel=3,  # the caller's line, past the check's wrapper
        )
