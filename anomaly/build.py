"""Building detectors: a new one for a config, or a trained one from its run folder.

`build_detector` resolves what a config names in other runs (`--from RUN` for kmeans, the
trained encoder of `--backbone encoder:RUN`) into the modules the detector is given, and gives
flow and draem their network settings; `load_run` rebuilds a run's detector with its own config
and model.pt. `anomaly.pipeline` (train, score) re-exports both.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import partial
from pathlib import Path

import torch

from anomaly.config import METHOD_DEFAULTS, Config
from anomaly.data.files import on_disk
from anomaly.detectors import Detector, get_detector
from anomaly.detectors.inputs import unchecked
from anomaly.detectors.kmeans import check_encoder  # kmeans --from checks it too
from anomaly.run_checkpoints import SPLIT_KEY, TRAIN_AGAIN, check_split_of_model
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import sha256_file
from anomaly.selection import selection_problem
from anomaly.terminal import shell_word
from anomaly.threshold_file import model_sha256
from anomaly.train import select_device

# A process forked after torch ran on several threads (a run loaded, then a fork-based
# multiprocessing.Pool of workers scoring with it) waits for ever in OpenMP's pool, whose threads
# the fork did not copy: each forked child computes on one thread (as DataLoader workers do)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))


def load_run(run_dir: str | Path, device: str | None = None) -> Detector:
    """Rebuild the detector saved in a run folder, with its own config and weights. It records
    its run folder (`detector.run`) and the SHA-256 of the model.pt it read
    (`detector.model_sha256`)."""
    run = RunDir(run_dir)
    config = run.trained_config()
    detector = build_detector(config, source=None if config.method != "kmeans" else False, run=run)
    digest = model_sha256(run.file(run.MODEL))  # before reading: a replaced file then differs
    payload = run.load_checkpoint(detector)
    # which run and model.pt it holds: a service that keeps it loaded can tell when the run's
    # files changed under it (`predict_images(detector, ...)` checks)
    detector.run, detector.model_sha256 = run.path.resolve(), digest  # a chdir: still it
    if said := stretched(detector, config):  # a run trained before such sizes were refused
        warnings.warn(said.replace("would be", "are") + " (train a new run at one)", stacklevel=2)
    incomplete = not payload.get("complete", True)  # half-way through a training
    if incomplete or run.training_now():  # (a resume replaces model.pt, then its threshold)
        run.check_not_in_use("read")  # still training: in use, not interrupted
    if incomplete:
        if not run.has_last():  # stopped before its first epoch was saved: nothing to resume
            raise RunError(
                f"{run}: its training was interrupted before its first epoch was saved, so "
                "model.pt holds a model from the middle of it and there is nothing to resume; "
                + TRAIN_AGAIN.format(out=shell_word(run))
            )
        raise RunError(
            f"{run}: its training was interrupted, so model.pt holds a model from the middle of "
            "it (and threshold.json, if any, an earlier model's threshold); finish it with "
            f"`python -m anomaly train --resume --out {shell_word(run)}`"
        )
    # its data sets (`detector.dataset`) hold the run's split: a plain layout's test images are
    # then the good images it neither trained on nor held out, as `score`'s
    # (a partial, not a lambda: it pickles), checked against the split model.pt records
    detector.trained_in = partial(_trained_in, run, config.data, payload.get(SPLIT_KEY))
    if problem := selection_problem(run, payload):  # it scores as model.pt says: a warning
        warnings.warn(problem, stacklevel=2)
    if device is not None:
        return detector.to(select_device(device))
    try:
        return detector.to(select_device(config.device))
    except ValueError:  # trained on a GPU this machine lacks: scores do not depend on it
        warnings.warn(
            f"{run}: trained on --device {config.device}, which this machine lacks; "
            "running on what it has (--device auto)",
            stacklevel=2,
        )
        return detector.to(select_device("auto"))


def build_detector(config: Config, source=None, run: RunDir | None = None) -> Detector:
    """A new detector for `config`, with what it needs from other runs already loaded.

    kmeans gets the trained run `config.source_run` (`source`; False = none, for a checkpoint
    that carries its own); patchknn/flow with backbone `encoder:RUN` get that run's encoder;
    flow and draem get their network settings (`flow_*`, `draem_*` fields), so a run with
    non-default ones is rebuilt as it was trained. `run`: the run whose model.pt the detector
    will load (its encoder must be the one it was trained on).
    """
    cls = get_detector(config.method)
    kwargs = {}
    if config.method == "kmeans" and source is None:
        if not config.source_run:
            raise ValueError("--method kmeans needs --from RUN (a trained ae, unet or vae run)")
        source = load_run(config.source_run, device="cpu")
    if config.method == "kmeans" and source is not False:
        kwargs["source"] = source
    if config.method == "flow":
        kwargs.update(
            steps=config.flow_steps, hidden_ratio=config.flow_hidden_ratio, clamp=config.flow_clamp
        )
    if config.method == "draem":
        kwargs.update(
            disc_width=config.draem_disc_width or None,
            depth=config.draem_depth,
            p_anomaly=config.draem_p_anomaly,
            focal_weight=config.draem_focal_weight,
            norm=config.draem_norm,
        )
    digest = None
    if config.backbone.startswith("encoder:") and config.method in ("patchknn", "flow"):
        model, digest = _encoder(config, run)
        if config.method == "patchknn":
            kwargs["module"] = model
        else:
            from anomaly.features import build_backbone

            kwargs["backbone"] = build_backbone(
                config.backbone, in_channels=config.channels, module=model
            )
    detector = cls(config, **kwargs)
    detector.encoder_sha256 = digest  # saved in model.pt: a retrained encoder is noticed
    return detector


def _encoder(config: Config, run: RunDir | None = None):
    """The trained encoder `--backbone encoder:RUN` names, and its model.pt's SHA-256; with
    `run` (a trained run being rebuilt), refused when it is not the encoder `run` learned on.
    Other channels or size than the encoder's are refused (`check_encoder`, as kmeans
    refuses them); a run trained on another size before that was refused loads with a warning."""
    encoder = RunDir(config.backbone.split(":", 1)[1])
    if not encoder.has_model() and (moved := _moved_encoder(encoder, run)) is not None:
        encoder = moved  # copied with the run to another machine: the same model.pt
    if not encoder.has_model():
        fix = "give the folder of a trained ae, unet or vae run"
        if run is not None:  # older runs name it by a path relative to where they were trained
            fix = f"restore the encoder run {run} was trained on" + (
                ""
                if encoder.path.is_absolute()
                else ", or run this from the folder "
                f"{run} was trained in ({run} names it by a path relative to it)"
            )
            if _recorded_encoder(run) is not None:
                fix += f", or put a copy of it beside {run}: {run.path.parent / encoder.path.name}"
        raise RunError(
            f"--backbone {config.backbone}: {os.path.abspath(encoder.path)} is not a trained "
            f"run (no config.json and model.pt there); {fix}"
        )
    digest = model_sha256(encoder.file(encoder.MODEL))  # cached: `_moved_encoder` read it too
    recorded = _recorded_encoder(run)
    if recorded is None and run is not None and run.has_model():
        warnings.warn(
            f"{run}: made before runs recorded their encoder's model, so a retrained or resumed "
            f"{encoder} would change its scores without a word; train it again to record it",
            stacklevel=3,
        )
    elif recorded is not None and recorded != digest:
        raise RunError(
            f"{run} was trained on the features of another model of {encoder} (its model.pt "
            "changed since: retrained or resumed), so what it learned of normal features no "
            f"longer matches what that encoder gives; train {run} again (another --out, or "
            f"delete it first), or restore {encoder} as it was"
        )
    trained = load_run(encoder, device="cpu")
    model = getattr(trained, "model", None)
    if model is None or not hasattr(model, "forward_features"):
        raise ValueError(
            f"--backbone {config.backbone}: {encoder} is not an ae, unet "
            "or vae run (no encoder to take features from)"
        )
    leave_out = "train then takes the encoder run's"
    source = f"--backbone {config.backbone}"
    check_encoder(source, trained.config, config, leave_out, None if run is None else str(run))
    return model, digest


def _moved_encoder(encoder: RunDir, run: RunDir | None) -> RunDir | None:
    """The encoder run beside `run` under `encoder`'s name (both copied to another place, where
    the absolute path `run` records leads nowhere), when its model.pt is the one `run` records
    (named in a warning); else None."""
    recorded = _recorded_encoder(run)
    if recorded is None or run is None:
        return None
    beside = RunDir(run.path.parent / encoder.path.name)
    if not beside.has_model() or model_sha256(beside.file(beside.MODEL)) != recorded:
        return None
    warnings.warn(
        f"{run}: its encoder run {encoder} is not there; using {beside} beside it, whose "
        "model.pt is the one it was trained on (the same SHA-256)",
        stacklevel=4,
    )
    return beside


def _recorded_encoder(run: RunDir | None) -> str | None:
    """The encoder digest `run`'s model.pt was trained with (None: no model, or no record)."""
    if run is None or not run.has_model():
        return None
    state = run.checkpoint().get("state")
    recorded = state.get("encoder_sha256") if isinstance(state, dict) else None
    return recorded if isinstance(recorded, str) else None


# sizes below which a method runs but learns nothing: DRAEM's synthetic anomalies (Perlin
# blobs, drawn again when empty) come out for 94 % of 8 px images, 56 % at 4 px, none at 1 px
MIN_SIZE = {"draem": 8}


def check_size(detector: Detector, config: Config, again: bool = False) -> None:
    """Refuse an image size the method's networks cannot take, or learn nothing from
    (`MIN_SIZE`), before any data is read; `again` (`train --like`: a run trained before such
    sizes were refused), a size a feature grid stretches is warned of instead."""
    if config.size < (least := MIN_SIZE.get(config.method, 0)):
        default = METHOD_DEFAULTS.get(config.method, {}).get("size", Config.size)
        raise ValueError(
            f"--size {config.size} is too small for {config.method}: below {least} px many of its "
            "synthetic anomalies come out empty (at 4 px 44 %, at 1 px all), so it learns little "
            f"or nothing; use at least {least} (its default is {default})"
        )
    depth = config.draem_depth
    if config.method == "draem" and config.draem_norm == "batch" and config.size <= 2**depth:
        raise ValueError(  # (torch's words: "Expected more than 1 value per channel")
            f"--size {config.size} with --draem-depth {depth} leaves DRAEM's bottleneck 1 x 1 "
            "px, where --draem-norm batch cannot train on a batch of one image (nor normalise "
            "well on a few); use --draem-norm group (the default), a larger --size, or a "
            "smaller --draem-depth"
        )
    probe = (
        getattr(detector, "embed", None)
        or getattr(detector, "raw_features", None)
        or (detector.predict_batch if hasattr(detector, "step") else None)
    )
    if probe is None:  # kmeans takes its source run's size; others check their own input
        return
    if said := stretched(detector, config):
        if not again:
            raise ValueError(said)
        warnings.warn(said.replace("would be", "are"), stacklevel=3)

    def fails(size: int) -> str | None:
        try:
            with unchecked():  # an untrained network, at sizes other than the run's
                probe(torch.zeros(2, config.channels, size, size))
        except (RuntimeError, ValueError) as err:
            return str(err).strip().splitlines()[0][:160]
        return None

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        modes = {name: m.training for name, m in detector.modules().items()}
        for m in detector.modules().values():
            m.eval()
        try:
            if first := fails(config.size):  # then the sizes near it that work
                works = _sizes_near(config.size, fails)
                below = [s for s in works if s < config.size][-1:]
                above = [s for s in works if s > config.size][:1]
                default = METHOD_DEFAULTS.get(config.method, {}).get("size", Config.size)
                hint = (
                    f"use {' or '.join(map(str, below + above))}" if works else "use a larger one"
                )
                raise ValueError(
                    f"--size {config.size} does not work for {config.method} ({first}); "
                    f"{hint} (its default is {default})"
                )
        finally:
            for name, m in detector.modules().items():
                m.train(modes[name])


def stretched(detector: Detector, config: Config) -> str | None:
    """Why `config.size` stretches the detector's feature grid over the image (patchknn, flow:
    a size not a multiple of its cells, whose grid covers whole cells past the edge), or None."""
    backbone = getattr(getattr(detector, "extractor", detector), "backbone", None)
    step = math.lcm(*getattr(backbone, "stride", None) or [1])
    if not config.size % step:
        return None
    up = -(-config.size // step) * step
    near = " or ".join(str(s) for s in (config.size // step * step, up) if s)
    return (
        f"--size {config.size} does not work for {config.method} with its layers: their "
        f"feature grid has cells of {step} px, so its maps would be stretched over the image "
        f"and miss defects by up to {up - config.size} px at its far edge; use {near}"
    )


def _sizes_near(size: int, fails) -> list[int]:
    """Sizes near `size` that a network takes (`fails(s)` None): up to 128 px each multiple of 8
    around it, probed; above, the multiple it needs is found with probes of 136 to 192 px (an
    odd multiple of 8, 16, 32 or 64), so that a refusal of 1001 px costs no passes at 1001 px."""
    if size <= 128:
        near = range(8 * (size // 8 - 3), size + 33, 8)
        return [s for s in near if s >= 8 and s != size and not fails(s)]
    step = next((m for m in (8, 16, 32, 64) if not fails(128 + m)), None)
    if step is None or size % step == 0:  # not a matter of the multiple
        return []
    return [size // step * step, size // step * step + step]


def trained_images(rd: RunDir) -> dict | None:
    """What the run's training images were (split.json's "images", `data.image_kind`), or None
    for a run from before that record, or a split.json that does not read (said: images unlike
    the training ones then go unnamed)."""
    try:
        return (rd.split() or {}).get("images")
    except (RunError, AttributeError) as err:
        warnings.warn(f"{err}; images are not compared with the training images", stacklevel=2)
        return None


def _trained_in(run: RunDir, trained_on: str, recorded, root) -> set[str] | None:
    """`trained_split` of `root`; RunError for a plain layout, whose test images are the good
    images the split does not name, where split.json is not the split model.pt `recorded`
    (another model's: some of them this model learned). train/ and test/: the split chooses no
    test image. Asked by `score` and `dataset`, not on every load (`predict` needs no split)."""
    if not (Path(root) / "train").is_dir() and (why := check_split_of_model(run, recorded)):
        raise RunError(why)
    return trained_split(run, trained_on, str(root))


def trained_split(rd: RunDir, trained_on: str, data: str) -> set[str] | None:
    """The images the run trained on or held out, relative to its data folder `trained_on`,
    found in `data`: in the plain layout its test images are then every other one (good images
    added since training are tested; none moves a trained image into the test). In another
    folder than `trained_on` (the data moved, or other data), an image counts by its place and
    its bytes (split.json's SHA-256s): a copy of the set keeps its split, another set with the
    same file names is all tested. None where split.json says nothing."""
    split = rd.split()
    if split is None:
        return None
    names = split_names(split, trained_on)
    if os.path.abspath(data) == os.path.abspath(trained_on):
        return set(names)
    digests = split.get("sha256") or []
    if len(digests) != len(names):  # an older run: no way to tell a copy from other data
        return None
    # only good/<file> names count (`AnomalyDataset` asks no other), so nothing outside `data`
    # is read: a split.json from someone else may name any path (/proc/kmsg never ends)
    here = [
        (n, Path(on_disk(os.path.join(data, n))), d)
        for n, d in zip(names, digests)
        if _good_name(n)
    ]
    return {n for n, p, d in here if p.is_file() and sha256_file(p) == d}  # none: all tested


def _good_name(name: str) -> bool:
    """Whether `name` (relative to a data folder) is a file right in its good/ folder."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == "good" and parts[1] not in ("", ".", "..")


def split_names(split: dict, root: str) -> list[str]:
    """The images of a run's `split` (train and held out), relative to the data folder `root`
    ("good/x.png"), in the split's order."""
    root = os.path.abspath(root)
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in split["train"] + split["val"]]
