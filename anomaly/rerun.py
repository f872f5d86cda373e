"""Train a run again from its folder alone (`train --like RUN --out NEW`): its config.json, and the
images its split.json names (each checked against the SHA-256 it recorded), so that a colleague's
run can be reproduced, or shown not to be, and why.

The same data, settings and seed give a byte-identical model.pt on the same machine and versions
(README, "How the code is organised"). Where the new one is not RUN's byte for byte,
`same_model_words` says whether it holds the same model all the same (an older file's other byte
layout, or the same learned state under a recorded config that differs in `LIKE_CHANGES`), or
which versions.json entries differ, since those are what can change a model's last digits.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from pathlib import Path

from anomaly import threshold_file
from anomaly.config import Config, flag_of
from anomaly.detectors import Detector
from anomaly.pipeline import train_run
from anomaly.run_checkpoints import SPLIT_KEY
from anomaly.runs import RunDir, RunError
from anomaly.terminal import shell_word
from anomaly.train_guards import moved

# what may differ from the run trained again: where its data set is now, and where and how fast
# it runs (none changes what is learned, bar the last digits --device may move)
LIKE_CHANGES = ("data", "device", "workers")
# versions.json entries that are not about what made the model
NOT_MADE_BY = ("fit_seconds", "resumed")


def train_like(like: str | Path, out: str | Path, progress: bool = True, **changes) -> Detector:
    """Train the new run `out` as the run `like` was: its config (less `changes`, of
    `LIKE_CHANGES`: `data` names where its data set is now) and its split.json's training and
    held-out images, refused where one is missing or changed (`anomaly.pipeline._datasets`)."""
    source = RunDir(like).require()
    other = sorted(k for k, v in changes.items() if v is not None and k not in LIKE_CHANGES)
    if other:
        named = {f.name: flag_of(f) for f in fields(Config)}
        flags = ", ".join(named.get(k, k) for k in other)
        raise ValueError(
            f"--like {shell_word(like)} trains with that run's settings; leave out {flags} (only --data, "
            "--device and --workers may differ), or train a new run with your flags"
        )
    config, split = source.config(), source.split()
    if not split or not split.get("train"):
        raise RunError(
            f"{source} has no split.json naming its images, so which images it learned is not "
            "known; train with its flags and --seed instead (config.json holds them)"
        )
    if os.path.abspath(out) == os.path.abspath(source.path):
        raise RunError(f"--out {shell_word(out)} is the run --like names; choose a new folder")
    if config.method == "kmeans":
        _check_source(source, config)
    wanted = config.replace(**{k: v for k, v in changes.items() if v is not None})
    if os.path.abspath(wanted.data) != os.path.abspath(config.data):
        split = moved(split, config.data, wanted.data)
    _warn_new_images(wanted.data, split)
    return train_run(wanted, out, progress=progress, split=split)


def _warn_new_images(data: str, split: dict) -> None:
    """Say that good images were added since the run was trained: `--like` learns the run's
    own images alone, and one who added good parts (falsely rejected ones) expects them learned,
    where they were left out without a word. train/good: every image its split does not name;
    the plain layout's good/, whose test images the split does not name: more images than it
    can have held (its split's count and the test's share of that)."""
    from anomaly.data.files import _is_image, nfc, plain_test_count  # nfc: a Mac's copy
    from anomaly.onnx_checks import skipped_silently

    root = Path(data)
    mvtec = (root / "train").is_dir()
    folder = root / "train" / "good" if mvtec else root / "good"
    named = {nfc(os.path.abspath(p)) for p in split["train"] + split["val"]}
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # said where the data set is read
        return
    images = [p for p in entries if not skipped_silently(p.name) and p.is_file() and _is_image(p)]
    new = [p for p in images if nfc(os.path.abspath(p)) not in named]
    if not mvtec:  # the most good images a plain layout that trained on len(named) could hold
        held = max(
            n
            for n in range(len(named), 2 * len(named) + 3)
            if n - plain_test_count(n) <= len(named)
        )
        new = new if len(images) > held else []
    extra = len(new) if mvtec else len(images) - held
    if new:
        warnings.warn(
            f"{folder} holds {'' if mvtec else 'at least '}{extra} good image"
            f"{'s' * (extra != 1)} more than the run trained "
            f"on or {'held out' if mvtec else 'tested'}: --like learns the run's own images "
            f"alone{'' if mvtec else ' (the added ones are test images)'}. To learn them too, "
            "train a new run with its settings (config.json) on the data as it is now",
            stacklevel=3,
        )


def _check_source(run: RunDir, config) -> None:
    """RunError unless the kmeans run's --from run still holds the encoder the run clustered
    (model.pt keeps a copy of it): one trained again or further gives other features."""
    src = RunDir(config.source_run)
    kept = run.checkpoint()["state"].get("source")
    if not src.has_model() or not _same(kept, src.checkpoint()["state"]):
        raise RunError(
            f"{run} clustered the features of its --from run {src} as it was then; that run's "
            "model.pt is gone or another model now (trained again or further), so kmeans would "
            "learn other features. Restore it from a copy, or train a new kmeans run on it"
        )


def same_model_words(like: str | Path, out: str | Path) -> str:
    """Whether `out`'s model.pt is `like`'s, byte for byte, and where not, what versions.json
    records differently of what made each (or that nothing recorded differs)."""
    a, b = RunDir(like), RunDir(out)
    va, vb = a.versions_record() or {}, b.versions_record() or {}
    keys = sorted((set(va) | set(vb)) - set(NOT_MADE_BY))
    differ = [f"{k} {va.get(k)!r} -> {vb.get(k)!r}" for k in keys if va.get(k) != vb.get(k)]
    # reproduced by other versions all the same (the code changed, say): said, not hidden
    also = f"; made by other versions all the same: {'; '.join(differ)}" if differ else ""
    sha_a = threshold_file.model_sha256(a.file(a.MODEL))
    sha_b = threshold_file.model_sha256(b.file(b.MODEL))
    if sha_a is not None and sha_a == sha_b:
        return f"{b.file(b.MODEL)} is byte for byte {a.file(a.MODEL)}: the run is reproduced{also}"
    state_a, state_b = ({k: v for k, v in r.checkpoint().items() if k != SPLIT_KEY} for r in (a, b))
    if _same(state_a, state_b):  # written before model.pt's bytes were made canonical, or
        return (  # before it recorded its split (session 38)
            f"{b.file(b.MODEL)} holds what {a.file(a.MODEL)} holds, config and learned state "
            "alike: the run is reproduced (the older file is laid out otherwise, or records no "
            f"split, so a threshold does not carry over){also}"
        )
    if _same(state_a.get("state"), state_b.get("state")):
        changed = [k for k in LIKE_CHANGES if state_a["config"].get(k) != state_b["config"].get(k)]
        return (
            f"{b.file(b.MODEL)} holds the same learned state as {a.file(a.MODEL)}, tensor for "
            f"tensor: the run is reproduced (the files differ in the config they record: "
            f"{', '.join(changed) or 'its fields'}, so a threshold does not carry over){also}"
        )
    why = (
        "what made them differs: " + "; ".join(differ)
        if differ
        else "nothing versions.json records differs (the data set's images are the same)"
    )
    return (
        f"{b.file(b.MODEL)} differs from {a.file(a.MODEL)} (another model: its threshold does "
        f"not carry over); {why}"
    )


def _same(x, y) -> bool:
    """Whether two loaded states are equal: tensors element for element (and of one dtype and
    shape), everything else by ==."""
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.dtype == y.dtype
            and x.shape == y.shape
            and bool(torch.equal(x, y))
        )
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    return x == y
