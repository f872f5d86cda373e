"""`predict --onnx`: score image files with an exported detector (`anomaly.export`), as
`predict --run` does with a run: the same verdicts, overlays, threshold words and warnings.

Beside `anomaly.onnx_predict`, which needs only numpy, Pillow and onnxruntime, this module uses
the package (the threshold, the overlays, the file rules of `anomaly.predict`).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from anomaly.decision import batch_outside
from anomaly.onnx_predict import ExportError, OnnxDetector, read_file, to_input
from anomaly.safe_files import finite
from anomaly.terminal import shell_word


def _warn_if_stale(detector: OnnxDetector) -> None:
    """An exported file inside a run folder whose model or threshold has changed since the
    export (or that another run's export was put in) keeps its own: say so, and what to do."""
    from anomaly.export import use_the_run
    from anomaly.runs import RunDir
    from anomaly.threshold_file import MODEL_RECORD, model_sha256

    run = RunDir(detector.path.parent)
    made_by = detector.meta.get(MODEL_RECORD)  # exports from before it record no model
    now_model = model_sha256(run.file(run.MODEL)) if made_by and run.is_run() else None
    if now_model and now_model != made_by:
        print(
            f"warning: {detector.path} was exported from another model than {run.path}'s "
            f"model.pt (an earlier model of the run, or another run's); this prediction uses "
            f"the exported model. To use the run's model, {use_the_run(run.path)}",
            file=sys.stderr,
        )
        return
    try:
        now = run.threshold().value if run.is_run() and run.has_threshold() else None
    except Exception:  # noqa: BLE001  (an unreadable threshold.json there: nothing to compare)
        return
    if now is not None and abs(now - detector.threshold) > 1e-6 * max(1.0, abs(now)):
        print(
            f"warning: {detector.path} holds the threshold {detector.threshold:.6g} of its "
            f"export, but its run's threshold.json now says {now:.6g}; this prediction uses "
            f"{detector.threshold:.6g}. Export again to use the new one: "
            f"python -m anomaly export --run {shell_word(run.path)}",
            file=sys.stderr,
        )


def exported_threshold(detector: OnnxDetector):
    """The file's threshold as a `Threshold`: its value, its rule as the run's threshold.json
    named it (so `predict --onnx` words it as `predict --run` does; "exported" for a file that
    records no rule) and the params its words need (the guarantee, alpha, n, earlier_model:
    `export.THRESHOLD_PARAMS`)."""
    from anomaly.metrics import Threshold
    from anomaly.threshold_file import UNRECORDED, UNSUPPORTED

    if detector.threshold is None:
        raise ExportError(
            f"{detector.path} holds no threshold: export it from a run that has "
            f"threshold.json (`python -m anomaly threshold --run RUN ...`)"
        )
    rule = detector.meta.get("threshold_rule")
    if rule and detector.threshold_params is None:  # exported before the params were stored
        print(
            f"note: {detector.path} was exported before exports recorded what a threshold "
            "guarantees, so none is shown here; export the run again to carry it: "
            "python -m anomaly export --run RUN",
            file=sys.stderr,
        )
    params = dict(detector.threshold_params or {})
    void = detector.meta.get("threshold_void")
    if void in (UNRECORDED, UNSUPPORTED) and params.get("earlier_model") is True:
        del params["earlier_model"]  # written for older readers; the reason is `void`
        params[void] = True
    if (train := detector.meta.get("threshold_train")) is not None:  # checked on loading
        params["set_by"] = "train"  # for `decision.few_held_out`, as predict --run says it
        params["on_training_images"] = train == "training_images"
    return Threshold(detector.threshold, rule or "exported", params)


def predict_files(
    onnx_path: str | Path,
    images: list[str | Path],
    overlay_dir: str | Path | None = None,
    overlays: bool = True,
    each=None,
):
    """`predict --onnx`: as `anomaly.predict.predict_images`, with the exported file.

    Returns (results, threshold): per image path, score, verdict and overlay (written to
    `overlay_dir`, default `<file stem>_predict/` beside the ONNX file; None with `overlays`
    False), or path and error; `each(result)` called with each as soon as it is made.
    """
    from anomaly.predict import (
        OverlayNames,
        expand_images,
        overlay_folder,
        scored_result,
        unreadable,
    )

    detector = OnnxDetector(onnx_path)
    threshold = exported_threshold(detector)
    _warn_if_stale(detector)
    out = None
    if overlays:
        out = overlay_folder(
            overlay_dir or detector.path.with_name(detector.path.stem + "_predict"),
            _exported_data(detector),  # where the file says the run's data set is
            given=overlay_dir is not None,
        )
    paths = expand_images(images)
    detector.warn_unlike(paths)  # as `predict --run`: images unlike the training images
    results, used = [], OverlayNames()
    for path in paths:
        try:
            if why := unreadable(path):  # as `predict --run`: one rule for the files it reads
                raise ExportError(why)
            own = read_file(path, detector.size, detector.decode, detector.draft)
        except ExportError as err:
            results.append({"path": str(path), "error": str(err)})
        else:  # one decoding for the input and the overlay
            scores, maps = detector.predict([to_input(own, detector.size, detector.channels)])
            score, picture = float(scores[0]), None
            if out is not None:
                picture = _overlay(detector, path, own, maps[0], score, threshold.value)
            results.append(scored_result(path, score, picture, out, used, threshold))
            if "overlay_error" in results[-1]:  # a full disk: the verdicts go on
                out = None
        if each is not None:
            each(results[-1])
    scores = [r["score"] for r in results if "score" in r]  # as `predict --run`: a batch unlike
    if said := batch_outside(scores, _good_scores(detector)):  # the good images of its threshold
        warnings.warn(said, stacklevel=2)
    return results, threshold


def _good_scores(detector) -> list[float] | None:
    """The good images' scores the file's threshold rests on (its metadata's "good_scores",
    `export`), or None: absent (an older export), or not a list of finite numbers (a file from
    someone else: nothing in it is trusted)."""
    try:
        good = json.loads(detector.meta.get("good_scores", "null"))
    except (ValueError, TypeError, AttributeError):
        return None
    numbers = isinstance(good, list) and 0 < len(good) <= 1_000_000
    if not numbers or not all(finite(x) for x in good):
        return None
    return [float(x) for x in good]


def _overlay(
    detector: OnnxDetector, path: Path, own, amap, score: float, threshold: float
) -> bytes:
    """The overlay `predict --run` draws, as its PNG file's bytes: the image `own` at its own
    size (`read_file`: a JPEG at the size the file drafts it to), the map's evidence on the
    run's colour scale (the file's map_range: its held-out good maps' floor and the pixel
    threshold), the verdict, score and name."""
    from anomaly.overlays import EvidenceScale, annotated_overlay, png_bytes
    from anomaly.predict import overlay_tensor

    floor, top = detector.map_range or (0.0, threshold)  # exported before it: the threshold
    own = overlay_tensor(own).numpy()
    return png_bytes(
        annotated_overlay(own, amap, EvidenceScale(floor, top), score, threshold, title=path.name)
    )


def _exported_data(detector) -> str | None:
    """The data folder of the run a file was exported from (its metadata's config), or None
    where it does not say (a file from elsewhere: nothing in it is trusted beyond a path)."""
    try:
        data = json.loads(detector.meta.get("config", "{}")).get("data")
    except (ValueError, TypeError, AttributeError):
        return None
    return data if isinstance(data, str) and data and "\x00" not in data else None
