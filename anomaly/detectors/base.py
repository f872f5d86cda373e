"""The detector contract every method follows, the `Predictions` it returns, and the registry.

A detector learns "normal" from defect-free images (`fit`) and returns, for a data set at its
run's size and channels (`dataset(root)` makes one), one score per image and one anomaly map
per image (`predict`); what this package's detectors are given is checked first
(`anomaly.detectors.inputs`). Everything downstream (metrics, thresholds, overlays, the explorer,
the CLI and the benchmark) consumes `Predictions` only.
"""

from __future__ import annotations

import functools
import json
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.detectors import inputs
from anomaly.detectors.inputs import check_data
from anomaly.safe_files import available_memory


class Batch(TypedDict):
    """What a data loader gives a detector: `AnomalyDataset` items, collated."""

    image: torch.Tensor  # float32 [B, C, H, W] in [0, 1]
    mask: torch.Tensor  # float32 [B, H, W] in {0, 1}; zeros for good images and missing masks
    label: torch.Tensor  # int [B]: 0 good, 1 defective
    defect: list[str]  # defect kind ("good" for normal images)
    path: list[str]
    mask_known: torch.Tensor  # bool [B]: False for a defective image with no mask file


F16_MAX = float(np.finfo(np.float16).max)  # 65504


def _stored_maps(maps: np.ndarray) -> np.ndarray:
    """Maps as saved: float16, or float32 where a value lies beyond float16's range (it would
    be saved as infinite, and every picture of it blank)."""
    finite = maps[np.isfinite(maps)]
    if finite.size and float(np.abs(finite).max()) > F16_MAX:
        return maps.astype(np.float32)
    return maps.astype(np.float16)


_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _declared(z) -> dict[str, tuple[tuple, np.dtype]]:
    """Each array's shape and dtype in an .npz `z`, from its header alone: nothing decompressed
    (a file of 1 MB can declare gigabytes of deflated zeros)."""
    declared = {}
    for name in z.files:
        with z.zip.open(f"{name}.npy") as f:
            header = _HEADERS.get(np.lib.format.read_magic(f))
            if header is None:
                raise ValueError(f"its {name} is in an .npy format `score` never writes")
            shape, _, dtype = header(f)
            declared[name] = (shape, dtype)
    return declared


def check_declared(z) -> None:
    """ValueError, before anything is decompressed, when the arrays of predictions.npz `z`
    declare shapes `Predictions.save` never writes (other than one score, label and map per
    image), or more memory to read (the maps in float32 too) than the machine has available."""
    d = _declared(z)
    missing = sorted({"labels", "scores", "maps", "masks"} - set(d))
    if missing:
        raise ValueError(f"it has no {', '.join(missing)}")
    n, maps = d["labels"][0], d["maps"][0]
    if len(n) != 1 or d["scores"][0] != n or len(maps) != 3 or maps[0] != n[0]:
        raise ValueError(
            f"its arrays have the wrong shapes (labels {n}, scores {d['scores'][0]}, maps "
            f"{maps}): not one score, label and map for each image"
        )
    need = sum(int(np.prod(s)) * t.itemsize for s, t in d.values()) + int(np.prod(maps)) * 4
    if (free := available_memory()) is not None and need > free:
        raise ValueError(
            f"reading it needs {need / 2**30:.1f} GiB of memory, and {free / 2**30:.1f} GiB is "
            f"available: its {maps[0]:,} maps of {maps[1]} x {maps[2]} are more than this machine "
            "can hold (a file from elsewhere? score the run here)"
        )


def nonfinite(scores: np.ndarray, maps: np.ndarray) -> str | None:
    """Words for the NaN or infinite values among a run's scores, else among its maps ("1 of its
    10 scores is NaN or infinite"), or None when every one is finite."""
    for what, array in (("scores", scores), ("map values", maps)):
        if bad := int(array.size - np.count_nonzero(np.isfinite(array))):
            return f"{bad} of its {array.size} {what} {'is' if bad == 1 else 'are'} NaN or infinite"
    return None


@dataclass
class Predictions:
    """Per-image scores and per-pixel maps for one data set, in data set order.

    Attributes:
        paths: image file paths.
        labels: 0 = good, 1 = defective, shape [N].
        defects: defect kind per image ("good" for normal images).
        scores: image anomaly scores, higher = more anomalous, shape [N].
        maps: per-pixel anomaly maps, float32 [N, H, W] at the data set's image size.
        masks: ground-truth masks, uint8 {0,1} [N, H, W], or None when the data has none.
        mask_known: per image, whether its mask is known (False for a defective image with no
            mask file: it is left out of pixel metrics), bool [N]; None = all known.
    """

    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None = None
    method: str = ""
    meta: dict = field(default_factory=dict)
    mask_known: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.maps = np.asarray(self.maps, dtype=np.float32)
        if self.masks is not None:
            self.masks = (np.asarray(self.masks) > 0).astype(np.uint8)
        if self.mask_known is not None:
            self.mask_known = np.asarray(self.mask_known, dtype=bool)
            if self.mask_known.all():
                self.mask_known = None
        n = len(self.paths)
        for name in ("labels", "defects", "scores", "maps"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Predictions.{name} has {len(getattr(self, name))} rows, paths has {n}"
                )
        for name, dims, what in (("scores", 1, "[N]"), ("maps", 3, "[N, H, W]")):
            if n and len(shape := getattr(self, name).shape) != dims:  # a detector of one's own
                raise ValueError(
                    f"Predictions.{name} has shape {shape}, not {what} (predict_batch returns "
                    "scores [B] and maps [B, H, W])"
                )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None and bool(self.masks.any())

    @property
    def n_missing_masks(self) -> int:
        """Defective images whose mask is unknown (left out of pixel metrics)."""
        return 0 if self.mask_known is None else int((~self.mask_known).sum())

    def save(self, path) -> None:
        """Save to one compressed .npz file (maps as float16 to stay small: `_stored_maps`);
        `path` may be a file object. Deflate level 1, not `np.savez_compressed`'s 6: float maps
        barely compress either way (2 % larger files), and it halves `score`'s time to write
        them."""
        known = self.mask_known if self.mask_known is not None else np.zeros((0,), bool)
        arrays = {
            "paths": np.array(self.paths),
            "labels": self.labels,
            "defects": np.array(self.defects),
            "scores": self.scores,
            "maps": _stored_maps(self.maps),
            "masks": self.masks if self.masks is not None else np.zeros((0,), np.uint8),
            "method": np.array(self.method),
            "meta": np.array(json.dumps(self.meta)),
            "mask_known": known,
        }
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for name, array in arrays.items():  # what np.load reads: one .npy per array
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read a file `save` wrote; ValueError when its arrays are not what `save` writes (the
        file may be someone else's): one score and a label of 0 or 1 per image, maps [N, H, W],
        masks of the maps' shape."""
        z = np.load(path, allow_pickle=False)
        check_declared(z)
        masks = z["masks"] if z["masks"].size else None
        known = z["mask_known"] if "mask_known" in z.files and z["mask_known"].size else None
        labels, scores, maps = z["labels"], z["scores"], z["maps"]
        if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
            raise ValueError("its labels are not one 0 or 1 for each image")
        if scores.ndim != 1 or maps.ndim != 3 or (masks is not None and masks.shape != maps.shape):
            raise ValueError(
                f"its arrays have the wrong shapes (scores {scores.shape}, maps {maps.shape}, "
                f"masks {None if masks is None else masks.shape}): not one score and one map "
                "for each image"
            )
        if known is not None and known.shape != labels.shape:
            raise ValueError("its mask_known is not one flag for each image")
        # `score` never writes a NaN or infinite score or map (it refuses the model instead), so
        # one here was put in since: every threshold, rate and histogram of it would be wrong
        for name, array in (("scores", scores), ("maps", maps)):
            if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
                array.dtype, np.complexfloating
            ):
                raise ValueError(f"its {name} are {array.dtype}, not real numbers")
        if bad := nonfinite(scores, maps):
            raise ValueError(f"{bad}, which `score` never writes")
        return cls(
            paths=[str(p) for p in z["paths"]],
            labels=labels,
            defects=[str(d) for d in z["defects"]],
            scores=scores,
            maps=maps.astype(np.float32),
            masks=masks,
            method=str(z["method"]),
            meta=json.loads(str(z["meta"])),
            mask_known=known,
        )


class Detector(ABC):
    """Base class: subclasses set `name` and implement `fit`, `predict_batch`, and the state.

    `predict` runs `predict_batch` over a loader and gathers a `Predictions`. Subclasses keep
    their learned state in `state_dict()` / `load_state_dict()` (a plain dict of tensors and
    plain values: it is saved and loaded with `torch.load(weights_only=True)`) so that a run
    folder can save and restore any method the same way. A detector never opens a run folder:
    what it needs from another run (kmeans' source, an `encoder:RUN` backbone) is built by
    `anomaly.pipeline` and passed to its constructor, and checkpoints go through the
    `checkpoints` object `fit` is given.

    This package's detectors have their own `fit`, `predict_batch` and `load_state_dict` wrapped
    (`__init_subclass__`): their input is checked (`anomaly.detectors.inputs`), and one trained
    by epochs (it has `step`) refuses to predict until `fit` or `load_state_dict` has run. A
    subclass defined outside the package is not wrapped; `predict` checks its data set all the
    same.
    """

    name: ClassVar[str] = ""
    _unfitted = False  # set by __init__ for methods trained by epochs, cleared by fit and load
    # backbone encoder:RUN: the SHA-256 of that run's model.pt, set by `pipeline.build_detector`
    # and saved in the state (patchknn, flow), so a retrained encoder is noticed when loading
    encoder_sha256: str | None = None
    # root -> the images its run trained on or held out there (`load_run`; `dataset` reads them)
    trained_in: Callable[[Any], set[str] | None] | None = None

    def __init__(self, config) -> None:
        self.config = config
        self.device = torch.device("cpu")
        # a method trained by epochs would score with its random first weights until trained
        # or loaded (the others refuse in their own predict_batch)
        self._unfitted = hasattr(self, "step")

    def __init_subclass__(cls, **kwargs) -> None:
        """Check what each of this package's detectors' own `fit` and `predict_batch` are given,
        and whether it is fitted, before they run (`anomaly.detectors.inputs`); a user's
        subclass may take other input and hand it on (its super() call is checked)."""
        super().__init_subclass__(**kwargs)
        if not cls.__module__.startswith("anomaly."):
            return
        if own := cls.__dict__.get("predict_batch"):
            cls.predict_batch = _checked_predict(own)
        if own := cls.__dict__.get("fit"):
            cls.fit = _checked_fit(own)
        if own := cls.__dict__.get("load_state_dict"):
            cls.load_state_dict = _loaded(own)

    def dataset(self, root, split: str = "test", **kwargs):
        """`anomaly.AnomalyDataset` of the folder `root` at this detector's size, channels and
        decoding: what `predict` takes (`kwargs` go to the data set: holdout, trained, cache).
        A detector loaded from a run (`load_run`) reads the run's split: in the plain layout
        its test images are the good images it neither trained on nor held out, as `score`'s
        (the holdout rule on today's folder put a trained image among them, once one was
        removed)."""
        from anomaly.data import AnomalyDataset

        settings = {k: getattr(self.config, k) for k in ("size", "channels", "decode")}
        if self.trained_in is not None and "trained" not in kwargs:  # a run's (`load_run`)
            kwargs["trained"] = self.trained_in(root)
        return AnomalyDataset(root, split, **settings, **kwargs)

    # --- to implement -------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        progress: bool = True,
        resume: bool = False,
        checkpoints: Any = None,
    ) -> Detector:
        """Learn "normal" from `train_data` (validation and early stopping on `val_data`).

        progress: show a progress bar. checkpoints: an `anomaly.train.Checkpoints` (the run's
        `RunDir`) that receives the best state after each improving epoch and what `resume`
        needs; None keeps everything in memory. resume: continue from `checkpoints`' last state
        (methods that do not train by epochs refuse it).
        """

    @abstractmethod
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores [B], maps [B, H, W]) for a batch of images [B, C, H, W] in [0, 1]."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The learned state: tensors and plain values only."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def refuse_resume(self, resume: bool) -> None:
        """For methods that do not train by epochs: there is nothing to continue."""
        if resume:
            raise ValueError(
                f"{self.name} does not train by epochs, so there is nothing to "
                "resume; train the run again without --resume"
            )

    # --- shared -------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Detector:
        """Move to `device`; a device this machine lacks is refused (ValueError) before the
        detector changes (it was left pointing at it, and every later call failed)."""
        from anomaly.train import select_device  # (which imports no detector)

        self.device = select_device(f"cuda:{device}" if isinstance(device, int) else str(device))
        for module in self.modules().values():
            module.to(self.device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules this detector owns (moved by `to`, set to eval in `predict`)."""
        return {}

    def loader(
        self, data: Dataset, shuffle: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        bs = batch_size or getattr(self.config, "batch_size", 16)
        return DataLoader(data, batch_size=bs, shuffle=shuffle, num_workers=0)

    def train_steps(
        self,
        train_data: Dataset,
        val_data: Dataset | None,
        *,
        checkpoints=None,
        resume: bool = False,
        progress: bool = True,
    ):
        """Minimise `self.step(images)` with the shared loop (`anomaly.train.fit_loop`)."""
        from anomaly.train import fit_loop

        val_loader = self.loader(val_data) if val_data is not None and len(val_data) else None
        self.history = fit_loop(
            self,
            self.step,
            self.loader(train_data, shuffle=True),
            val_loader,
            checkpoints=checkpoints,
            resume=resume,
            progress=progress,
        )
        return self

    @torch.no_grad()
    def predict(self, data: Dataset | DataLoader, progress: bool = False) -> Predictions:
        """Scores and maps of every image of `data` (an `AnomalyDataset` at the run's settings,
        as `dataset(root)` makes, or a DataLoader of its items)."""
        from tqdm.auto import tqdm

        check_data(self.config, data, self.name, "predict")
        loader = data if isinstance(data, DataLoader) else self.loader(data)
        for module in self.modules().values():
            module.eval()
        paths, labels, defects, scores, maps, masks, known, flat = [], [], [], [], [], [], [], []
        # one iterator: given the loader, tqdm.auto's bar calls iter() on it, a second one, whose
        # workers decode (and warn about) the first batches again
        try:
            total = len(loader)
        except TypeError:  # an iterable dataset of unknown length
            total = None
        batches = tqdm(
            iter(loader),
            total=total,
            desc=f"predict {self.name}",
            disable=not progress,
            leave=False,
        )
        for batch in batches:
            with inputs.frames_named():
                s, m = self.predict_batch(batch["image"].to(self.device))
            scores.append(s.detach().float().cpu().numpy())
            maps.append(m.detach().float().cpu().numpy())
            masks.append(batch["mask"].numpy())
            known += (
                [bool(x) for x in batch["mask_known"]]
                if "mask_known" in batch
                else [True] * len(batch["image"])
            )
            flat += [p for p, x in zip(batch["path"], batch["image"]) if inputs.empty_frame(x)]
            paths += list(batch["path"])
            labels += [int(x) for x in batch["label"]]
            defects += list(batch["defect"])
        if not paths:
            raise ValueError("predict() got an empty data set: there are no images to score")
        mask_arr = np.concatenate(masks)
        pred = Predictions(
            paths,
            np.array(labels),
            defects,
            np.concatenate(scores),
            np.concatenate(maps),
            mask_arr,
            method=self.name,
            mask_known=np.array(known),
        )
        pred.meta["flat"] = flat  # (`train` leaves held-out ones out of its threshold)
        if flat and not inputs.naming_frames():  # `score`'s metrics count them
            import warnings

            from anomaly.terminal import printable

            warnings.warn(
                f"{len(flat)} of the {len(paths)} images {'is' if len(flat) == 1 else 'are'} all "
                f"one flat colour ({', '.join(printable(p) for p in flat[:3])}"
                f"{' ...' * (len(flat) > 3)}): empty frames, which predict gives no verdict; "
                "their scores here count as any other's",
                stacklevel=3,  # the caller's line, past torch's no_grad wrapper
            )
        return pred


def _checked_predict(own: Callable) -> Callable:
    @functools.wraps(own)
    def predict_batch(self, images):
        if not inputs.checking():  # tracing for the export, build's size probes, or nested
            return own(self, images)
        if self._unfitted:
            raise RuntimeError(
                f"{self.name}: call fit() (or load a run, or load_state_dict) before predicting: "
                "its network has its random first weights"
            )
        inputs.check_batch(self.config, images, self.name)
        inputs.warn_empty_frames(images)  # from predict(): it names them, by file
        with inputs.unchecked():  # a detector it calls (auto's choice) gets what it passes on
            return own(self, images)

    return predict_batch


def _checked_fit(own: Callable) -> Callable:
    @functools.wraps(own)
    def fit(self, train_data, *args, **kwargs):
        check_data(self.config, train_data, self.name, "fit")
        if hasattr(train_data, "__len__") and len(train_data) == 0:
            raise ValueError(f"{self.name}: fit() got an empty data set: no images to learn from")
        try:
            fitted = own(self, train_data, *args, **kwargs)
        except KeyboardInterrupt:  # stopped part-way: trained so far, and may be looked at
            self._unfitted = False
            raise
        self._unfitted = False
        return fitted

    return fit


def _loaded(own: Callable) -> Callable:
    @functools.wraps(own)
    def load_state_dict(self, state):
        own(self, state)
        self._unfitted = False

    return load_state_dict


# the registry was defined here until 2026-12-05: a plugin's `from anomaly.detectors.base import
# register` still works (registry.py imports this module for type checking only: no cycle)
from anomaly.detectors.registry import REGISTRY, get_detector, register  # noqa: F401
