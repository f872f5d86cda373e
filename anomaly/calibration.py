"""Where a threshold's good-image scores come from: the run's held-out images, or a folder.

The rules that read scores of good images (`normal-quantile`, `conformal`) take them by default
from the good training images the run held out (`val_scores.json`). When those are near-copies
of training images (consecutive frames of one part, one batch, overlapping crops of one region)
they score lower than new good parts do, and the threshold rejects far more good parts than the
rule promises: the conformal guarantee holds only for parts exchangeable with the images it was
set on. `threshold --good-images FOLDER` scores a folder of good images taken the way production
images will be, with the run's detector, and sets the rule on those scores instead
(`calibrate_on_folder`); the folder, the number of images and a hash of their names and bytes
are recorded in the threshold (`params["calibration"]`) and every score, with the model.pt that
scored it, in the run folder (`RunDir.save_calibration`; kept while it records the run's model).

Copies among the good images are one draw of a good part, not several: each is counted once
(`_distinct`: the same file bytes, or in a folder the same decoded pixels), named, and when the
distinct images are too few for the conformal rule's alpha it is refused, as it is for too few
images (held-out copies: by split.json's SHA-256s). Images far above the rest are named."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np

from anomaly.data.files import (
    IMAGE_EXTENSIONS,
    DataError,
    broken_link,
    named,
    refuse_control_names,
    scan_images,
)
from anomaly.decision import HELD_OUT_FIX, far_above_words
from anomaly.metrics import (
    Threshold,
    conformal_n_needed,
    smallest_alpha,
    threshold_conformal,
    threshold_f1,
    threshold_manual,
    threshold_normal_quantile,
)
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import InUse, file_stamp, sha256_file
from anomaly.terminal import printable, shell_word
from anomaly.threshold_text import check_quantile

THRESHOLD_RULES = ("manual", "normal-quantile", "conformal", "f1")
NORMAL_SCORE_RULES = ("normal-quantile", "conformal")
FLAG = "--good-images"
PIXEL = "pixel_threshold"  # of a folder's maps, in calibrate_on_folder's record until saved


def good_images(folder: str | Path, alpha: float | None = None) -> list[Path]:
    """The image files directly in `folder`, sorted; DataError naming the folder and the fix
    when there is no such folder, no image in it, or (with `alpha`, the conformal rule) fewer
    images than that alpha needs."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{FLAG} {folder}: folder not found; pass the folder of good images")
    if not folder.is_dir():
        raise DataError(
            f"{FLAG} {folder}: this is a file; pass the folder that holds the good images"
        )
    images, broken, _ = scan_images(folder)
    refuse_control_names(folder, images + broken)
    if broken:
        raise DataError(f"{FLAG} {folder}: {broken[0]}: {broken_link(broken[0])}")
    if not images:
        inner = ", ".join(sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())[:4])
        hint = f" It holds folders ({inner}): pass the one with the images." * bool(inner)
        raise DataError(
            f"{FLAG} {folder}: no images in this folder. Put the good images to set the "
            f"threshold on directly in it ({', '.join(IMAGE_EXTENSIONS)}).{hint}"
        )
    if alpha is not None and len(images) < (need := conformal_n_needed(alpha)):
        raise DataError(
            f"{FLAG} {folder}: a conformal threshold at alpha={alpha:g} needs at least {need} "
            f"good images (alpha >= 1/(n+1)); the folder holds {len(images)}. Add "
            f"{need - len(images)} or more good images to it, or use --value "
            f"{smallest_alpha(len(images))} or more"
        )
    return images


def _refuse_training_images(rd: RunDir, folder: Path, images: list[Path], hashes: list[str]):
    """DataError when images of the folder are (byte for byte) images the run trained on."""
    split = rd.split() or {}
    trained = _digests(map(Path, split.get("train", [])), images)
    same = [(image, trained[h]) for image, h in zip(images, hashes) if h in trained]
    if same:
        pairs = ", ".join(f"{a.name} = {b}" for a, b in same[:3])
        raise DataError(
            f"{FLAG} {folder}: {len(same)} of its {len(images)} images are training images of "
            f"{rd} ({pairs}). The run scores what it learned from low, so the threshold would "
            "reject too many new good parts: use good images the run was not trained on"
        )


def _digests(files, images: list[Path]) -> dict[str, Path]:
    """{SHA-256: file} of the existing `files` that could be copies of one of `images`: only
    those of a size one of them has are read."""
    sizes = {p.stat().st_size for p in images}
    found: dict[str, Path] = {}
    for p in files:
        if p.is_file() and p.stat().st_size in sizes:
            found.setdefault(sha256_file(p), p)
    return found


KEPT_BYTES = 2**29  # decoded images kept from the readability check for predict (512 MB)


def _read_all(folder: Path, images: list[Path], config) -> tuple[list | None, list[str]]:
    """Read every image (`load_image`), naming each unreadable one in one DataError; the images
    read, to score without decoding them again (a folder of camera JPEGs takes as long to decode
    as to score), or None where they would take more than `KEPT_BYTES` of memory, and a SHA-256
    of each one's pixels as the detector sees them (copies saved twice: `_distinct`)."""
    from anomaly.data.folder import load_image
    from anomaly.detectors.inputs import empty_frame  # torch: not for held-out scores

    bad, kept, held, pixels, empty = [], [], 0, [], []
    for p in images:
        try:
            image = load_image(p, config.size, config.channels, config.decode)
        except DataError as err:
            bad.append(str(err))
            continue
        if empty_frame(image):  # as predict: no verdict, and no threshold
            empty.append(printable(p.name))
        shape = str(tuple(image.shape)).encode()
        pixels.append(hashlib.sha256(shape + image.numpy().tobytes()).hexdigest())
        held += image.numel() * image.element_size()
        if kept is not None and held <= KEPT_BYTES:
            kept.append(image)
        else:
            kept = None
    if bad:
        raise DataError(
            f"{FLAG} {folder}: {len(bad)} of its {len(images)} images cannot be read "
            "(re-save each as PNG, or delete it, then set the threshold again):\n" + "\n".join(bad)
        )
    if empty:
        raise DataError(
            f"{FLAG} {folder}: {len(empty)} of its {len(images)} images {'is' if len(empty) == 1 else 'are'} "
            f"all one flat colour ({named(empty, 3)}): empty frames, which predict gives no "
            "verdict, and whose scores would set the threshold; take them out of the folder"
        )
    return kept, pixels


def _distinct(names: list[str], *keys: list) -> tuple[list[int], list[list[str]]]:
    """(the index of the first image of each set of copies, the names in each set of two or
    more): an image is a copy of an earlier one when any of `keys` (one list each: a digest per
    image, None where unknown) is the same for both."""
    seen: dict = {}
    kept, sets = [], {}
    for i, name in enumerate(names):
        ids = [(j, key[i]) for j, key in enumerate(keys) if key[i] is not None]
        first = next((seen[k] for k in ids if k in seen), i)
        if first == i:
            kept.append(i)
        sets.setdefault(first, []).append(name)
        for k in ids:
            seen.setdefault(k, first)
    return kept, [names for names in sets.values() if len(names) > 1]


def _count_once(
    where: str, n: int, kept: int, sets: list, alpha, fix, error=DataError, same: str = ""
) -> None:
    """Copies of a good image are one draw of a good part, not several, so each set counts once:
    a warning naming them, or (the conformal rule) `error` when the distinct images are too few
    for `alpha`, as for too few images; `fix(k)`: how to add the k more it needs; `same`: how
    copies were told (default: the same file bytes)."""
    if not sets:
        return
    what = (
        f"{n - kept} of the {n} good images {'is a copy' if n - kept == 1 else 'are copies'} "
        "of another ("
        + named((named(s, 3, " = ") for s in sets), 2, "; ")
        + f": {same or 'the same file bytes'}), and a copy is not another good part"
    )
    if alpha is not None and kept < (need := conformal_n_needed(alpha)):
        raise error(
            f"{where}: a conformal threshold at alpha={alpha:g} needs at least {need} distinct "
            f"good images (alpha >= 1/(n+1)); {what}, so {kept} are distinct. {fix(need - kept)}"
            f", or use --value {smallest_alpha(kept)} or more"
        )
    warnings.warn(
        f"{where}: {what}: each image counts once, so the threshold is set on the {kept} "
        "distinct ones",
        stacklevel=4,
    )


class GoodImages:
    """Image files as data set items, all good (label 0), that a detector's `predict` accepts
    (`threshold --good-images` scores a folder of them); `decoded`: the images already read by
    `load_image`, in order, or None to read each when it is asked for."""

    def __init__(self, paths: list[Path], config, decoded: list | None = None) -> None:
        self.paths, self.config, self.decoded = paths, config, decoded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        import torch

        from anomaly.data.folder import load_image

        c = self.config
        if self.decoded is not None:
            image = self.decoded[i]
        else:
            image = load_image(self.paths[i], c.size, c.channels, c.decode)
        return {
            "image": image,
            "mask": torch.zeros(image.shape[-2:]),
            "label": 0,
            "defect": "good",
            "path": str(self.paths[i]),
        }


def calibrate_on_folder(
    rd: RunDir,
    folder: str | Path,
    detector,
    alpha: float | None = None,
    images: list[Path] | None = None,
) -> tuple[list[str], np.ndarray, dict]:
    """Score every image in `folder` with the run's `detector` (`load_run(rd)`).

    Checks first, naming the folder and the fix: the folder exists and holds images, enough
    for `alpha` (the conformal rule), every one readable, none a training image of the run,
    and enough distinct ones for `alpha` (`_count_once`: copies count once, and are not scored).

    Returns:
        (paths, scores, record): the distinct images and their scores in file-name order, and
        what the threshold records
        (source "folder", the folder as given and resolved, n: distinct images, copies: how
        many others were copies, images_sha256: a hash of every file name and its bytes, so a
        changed folder is told apart).
    """
    from anomaly.build import trained_images
    from anomaly.data.image_unlike import warn_unlike

    folder = Path(folder)
    images = images if images is not None else good_images(folder, alpha)
    config = detector.config
    decoded, pixels = _read_all(folder, images, config)
    warn_unlike(images, trained_images(rd), config.channels, config.size)  # a threshold for them
    hashes = [sha256_file(p) for p in images]
    _refuse_training_images(rd, folder, images, hashes)
    _warn_test_images(rd, folder, images, hashes)
    kept, copies = _distinct([p.name for p in images], hashes, pixels)
    more = "Keep one image of each set, and add {} or more other good images to the folder".format
    same = "the same file bytes, or the same pixels decoded"
    _count_once(f"{FLAG} {folder}", len(images), len(kept), copies, alpha, more, same=same)
    distinct = [images[i] for i in kept]
    decoded = decoded and [decoded[i] for i in kept]
    pred = detector.predict(GoodImages(distinct, config, decoded))
    scores = np.asarray(pred.scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{FLAG} {folder}: the detector gave NaN or inf scores to its images")
    if words := far_above_words([p.name for p in distinct], scores):
        warnings.warn(f"{FLAG} {folder}: {words}", stacklevel=2)
    from anomaly.viz import dataset_range  # as train's held-out images set the overlays' scale

    names = "\n".join(f"{p.name} {h}" for p, h in zip(images, hashes))
    digest = hashlib.sha256(names.encode("utf-8", "surrogateescape"))  # names' bytes as they are
    record = {
        "source": "folder",
        "folder": printable(str(folder)),  # a name's bytes that are not UTF-8: escaped
        "folder_resolved": printable(str(folder.resolve())),
        "n": len(distinct),
        **({"copies": len(images) - len(kept)} if copies else {}),
        "images_sha256": digest.hexdigest(),
        PIXEL: dataset_range(pred.maps)[1],  # set_threshold moves it to the threshold's params
    }
    return [str(p) for p in distinct], scores, record


def _warn_test_images(rd: RunDir, folder: Path, images: list[Path], hashes: list[str]) -> None:
    """Name good images that are the run's own scored test images, or byte-for-byte copies of
    them: the threshold is then set on the images that judge it, and their false-reject rate
    says nothing of new parts."""
    from anomaly.runs import read_scores

    if not rd.file(rd.SCORES).is_file():
        return
    with contextlib.suppress(Exception):  # damaged scores.csv: score says so, not threshold
        tested = [Path(r.get("path", "")) for r in read_scores(rd)]
        real = {os.path.realpath(p) for p in tested}
        copies = _digests(tested, images)
        same = [p for p, h in zip(images, hashes) if os.path.realpath(p) in real or h in copies]
        if same:
            warnings.warn(
                f"{FLAG} {folder}: {len(same)} of its {len(images)} images are test images "
                f"{rd} was scored on; the threshold is then set on the images that judge it, "
                "and the test's false-reject rate on them says nothing of new parts. Use good "
                "images the run has not seen",
                stacklevel=3,
            )


def check_rule(rule: str, folder: str | Path | None) -> str:
    """The rule as the CLI names it (threshold.json's normal_quantile too); ValueError when a
    folder of good images is given to a rule that reads no such scores."""
    rule = str(rule).replace("_", "-")
    if folder is not None and rule not in NORMAL_SCORE_RULES:
        raise ValueError(
            f"{FLAG}: --rule {rule} reads no good-image scores; drop {FLAG}, or use "
            f"--rule {' or '.join(NORMAL_SCORE_RULES)}"
        )
    return rule


def good_scores(
    rd: RunDir, folder: str | Path | None, alpha: float | None = None
) -> tuple[list[str] | None, np.ndarray, dict]:
    """(paths, scores, record) of `folder` scored now by the run's detector (`calibrate_on_
    folder`: only it loads torch), or of the held-out images (None, scores, record)."""
    if folder is None:
        _refuse_unfinished(rd)
        stored, split = rd.val_scores(), rd.split() or {}
        if set(split.get("train", [])) & set(stored.get("paths", [])):  # --val-fraction 0
            raise RunError(
                f"{rd} held out no good images (trained with --val-fraction 0), so its stored "
                "scores are of its training images, which score lower than new good parts: a "
                f"threshold on them would reject too many and guarantee nothing. Set it on "
                f"other good images: {FLAG} FOLDER"
            )
        names = [Path(str(p)).name for p in stored.get("paths") or []]  # a defect among them?
        if words := far_above_words(names, stored["scores"], HELD_OUT_FIX):
            warnings.warn(f"{rd}'s held-out good images: {words}", stacklevel=3)
        return None, *_held_out(rd, stored, split, alpha)
    images = good_images(folder, alpha)  # before the model is loaded: a quick refusal
    from anomaly.build import load_run

    return calibrate_on_folder(rd, folder, load_run(rd), alpha, images)


def distinct_held_out(rd: RunDir, scores: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """(scores, record) of val_scores.json train's default threshold rests on, as `threshold
    --rule` takes and records them (`_held_out`): the record None where none was left out;
    `scores` where each held-out image is a copy of a training image (`warn_held_out`)."""
    try:
        kept, record = _held_out(rd, rd.val_scores(), rd.split() or {}, None, quiet=True)
    except RunError:
        return scores, None
    return kept, record if record.get("copies") else None


def _held_out(rd: RunDir, stored: dict, split: dict, alpha: float | None, quiet=False):
    """(scores, record) of the run's held-out good images, a copy among them counted once and a
    copy of a training image not at all (split.json's SHA-256s, where val_scores.json's images
    are among its held-out ones: train leaves empty frames out); the record holds those."""
    scores, paths = np.asarray(stored["scores"], np.float64), stored.get("paths") or []
    train, val = split.get("train") or [], split.get("val") or []
    digests = split.get("sha256") or []
    mine = len(digests) == len(train) + len(val) and len(paths) == scores.size
    mine = mine and all(isinstance(p, str) for p in paths) and set(paths) <= set(map(str, val))
    mine = mine and len(set(paths)) == len(paths)  # (each of its images once: else edited)
    learned = [str(p) for p in train] if mine else []  # first: a copy of one is never kept
    of = dict(zip(map(str, val), digests[len(train) :])) if mine else {}
    keys = [
        d if isinstance(d, str) else None for d in [*digests[: len(learned)], *map(of.get, paths)]
    ]
    kept, copies = _distinct([*learned, *paths], keys)
    kept = [i - len(learned) for i in kept if i >= len(learned)]
    copies = [c for c in copies if set(c) & set(paths)]  # (copies within train/ are train's)
    if not copies:
        return scores, {"source": "held-out", "n": int(scores.size)}
    if not kept:  # each a copy of a training image (a folder copied in twice)
        raise RunError(
            f"{rd}: each of its {len(paths)} held-out images is a copy of a training image ("
            + named((named(c, 3, " = ") for c in copies), 2, "; ")
            + f"), which the model learned: a threshold on them guarantees nothing. Keep one of "
            f"each set in the data and train again, or set it on {FLAG} FOLDER"
        )
    more = f"Keep one of each set in the data and train again, or set it on {FLAG} FOLDER".format
    if not quiet:
        _count_once(f"{rd}'s held-out images", len(paths), len(kept), copies, alpha, more, RunError)
    scores = scores[kept]
    record = {"source": "held-out", "n": len(kept), "copies": len(paths) - len(kept)}
    return scores, {**record, "scores": [float(x) for x in scores]}


def _refuse_unfinished(rd: RunDir) -> None:
    """RunError naming `train --resume` for a run stopped after training, before val_scores.json
    (training it again would throw a finished training away); one still training: in use."""
    if rd.file(rd.VAL_SCORES).exists() or not rd.has_model():
        return
    rd.check_not_in_use("threshold")  # still training: in use, not stopped
    if rd.stopped_before_threshold():
        raise RunError(
            f"{rd} stopped after training, before its held-out images were scored; finish it, "
            f"without training again: `python -m anomaly train --out {shell_word(rd)} --resume`"
        )


def attach(threshold: Threshold, record: dict) -> Threshold:
    """Record where the good-image scores came from in `threshold.params["calibration"]`; a
    conformal guarantee set on a folder names it."""
    threshold.params["calibration"] = record
    if record["source"] == "folder" and threshold.rule == "conformal":
        alpha, n = threshold.params["alpha"], record["n"]
        threshold.params["guarantee"] = (
            f"false-reject rate <= {100 * alpha:.3g}% for new good parts exchangeable with the "
            f"{n} good image{'s' * (n != 1)} in {record.get('folder_resolved', record['folder'])}"
        )
    return threshold


def set_threshold(
    run: str | Path, rule: str, value: float | None = None, good_images: str | Path | None = None
) -> Threshold:
    """Choose the run's threshold by a rule and save it as threshold.json (what predict uses).

    manual: `value`; normal-quantile: the `value` quantile (default the config's) of held-out
    normal scores (1.0 = their max); conformal: `value` is alpha, the false-reject rate to
    guarantee on the held-out normal scores; f1: F1-optimal on the scored test set (needs
    labelled defects; takes no value). `good_images`: a folder of good images taken as the
    images to check will be; normal-quantile and conformal then read its scores (scored now,
    saved in calibration_scores.json) instead of the held-out ones (this module's docstring).
    The threshold records where its scores came from (`params["calibration"]`).
    """
    rd = RunDir(run).require().require_model("threshold")
    before = file_stamp(rd.file(rd.THRESHOLD))  # another command's save meanwhile is not undone
    if value is not None and not math.isfinite(value):
        raise ValueError(f"--value {value}: it must be a finite number")
    rule, paths, record = check_rule(rule, good_images), None, None
    if rule == "manual":
        if value is None:
            raise ValueError("--rule manual needs --value V (the threshold on the image score)")
        rd.check_not_interrupted()  # a model from the middle of its training, or in use
        threshold = threshold_manual(value)
    elif rule == "normal-quantile":
        q = check_quantile(value if value is not None else rd.config().threshold_quantile)
        paths, scores, record = good_scores(rd, good_images)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            threshold = threshold_normal_quantile(scores, q=q)
    elif rule == "conformal":
        if value is None:
            raise ValueError(
                "--rule conformal needs --value ALPHA (the false-reject rate to "
                "guarantee, for example 0.05)"
            )
        paths, scores, record = good_scores(rd, good_images, alpha=value)
        threshold = threshold_conformal(scores, value)
    elif rule == "f1":
        if value is not None:
            raise ValueError(
                "--rule f1 chooses the threshold itself from the scored test set; "
                "drop --value (or use --rule manual --value V)"
            )
        rd.check_not_interrupted()  # `score` refuses it: --resume first
        pred = rd.predictions()
        threshold = threshold_f1(pred.labels, pred.scores)
        threshold.params["n_defective"] = int(np.sum(np.asarray(pred.labels) > 0))
    else:
        raise ValueError(
            f"Unknown threshold rule {rule!r}; choose one of {', '.join(THRESHOLD_RULES)}"
        )
    if not math.isfinite(threshold.value):  # finite scores can overflow: 1e308 and -1e308
        where = rd.file(rd.PREDICTIONS) if record is None else rd.file(rd.VAL_SCORES)
        where = record.get("folder", where) if record else where
        raise ValueError(
            f"--rule {rule}: the threshold on the scores in {where} is {threshold.value}, not a "
            "finite number (scores too large to compute with); nothing saved. Check those scores"
        )
    if pixel := (record or {}).pop(PIXEL, None):  # red from where the folder's maps end, as
        threshold.params["pixel_threshold"] = pixel  # its scores set the threshold
    if paths is not None:  # the threshold holds its scores: calibration_scores.json is
        record = {**record, "scores": [float(s) for s in scores]}  # written first, so a kill
    if record is not None:  # between the two leaves the earlier threshold whole
        attach(threshold, record)
    with rd.lock("threshold"):
        if file_stamp(rd.file(rd.THRESHOLD)) != before:
            raise InUse(
                f"{rd.file(rd.THRESHOLD)} was saved by another command while this one chose "
                f"its threshold ({threshold.value:.6g}, {rule}), which is not saved: the other "
                "one stands. Run this one again to replace it"
            )
        if paths is not None:
            rd.save_calibration(paths, scores, record)
        else:  # an earlier one stays only while it records this model.pt as the one scoring it
            rd.drop_stale_calibration()
        _, removed = rd.replace_threshold(threshold)  # score's overlays of another one: removed
    if removed:
        print(removed)
    return threshold
