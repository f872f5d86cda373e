"""`auto`: choose a method and its settings without labels, by how well each finds fake defects.

What it does (`AutoDetector.fit`, training images only, never a test image or label):

1. holds out a seeded fraction of the normal training images (`HOLDOUT_FRACTION`, at least
   `MIN_HOLDOUT`) and makes synthetic defects in copies of them: `SYNTHETIC_PER_IMAGE` per
   held-out image of DRAEM's Perlin-noise blobs filled with a texture cut from another held-out
   image or with procedural noise, at a random opacity (`anomaly.synthetic.synthesize`), and
   `ALTERED_PER_IMAGE` quiet local ones, a small region blurred, tinted or faintly overlaid
   (`anomaly.synthetic.alter`). DRAEM's blobs alone are too easy: every good candidate finds
   all of them, and the choice then said nothing about small, quiet defects;
2. fits every candidate of the grid (`CANDIDATES`: a list of `Config` overrides, the one place
   to change it) on at most `TRIAL_IMAGES` of the remaining training images, and scores the
   held-out normal images and the synthetic defects;
3. ranks the candidates by **image AUROC** of held-out normals against synthetic defects (the
   job is to say which images are defective, and the known failure on real photos was an image
   score that missed defects its maps saw). Candidates within `TIE` of the best image AUROC are
   tied (easy synthetic defects often give several a perfect 1.0); among them the one with the
   highest **AUPRO** on the synthetic masks wins (localisation, with small regions counted as
   much as large ones), then the higher image AUROC, then the earlier one in the grid;
4. fits the winner on all training images. `selection` records every candidate's settings,
   scores and times, and the choice; the run folder keeps it as `selection.json`, and model.pt
   (`state_dict`) without the times, so the same seed gives the same file.

What it optimises, and its limits: the separation of *synthetic* defects from held-out normal
images. The synthetic defects are not the user's: a candidate that finds pasted textures and
small blurred or tinted regions well may still miss thin cracks or missing parts, and the quiet
alterations favour the finer (and slower) candidates, which cost 1.9-4.4x the defaults' predict
time when chosen (README: images/s in the benchmark's logs, CPU per image in a race). Held-out normals come from the training images, so a shift between training
and test conditions (lighting, position) is not seen either. The trial fits use fewer images
than the final fit. Auto is a label-free guess that is better than a fixed default only as far
as the synthetic defects resemble the real ones; check the choice on a few labelled images where
you have them.

Every candidate sees the images at the run's size (`config.size`) and resizes them to its own;
its maps are resized back, so predictions have the run's size whatever is chosen. The same
seed gives the same held-out split, the same synthetic defects, the same trial fits and the
same choice.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from anomaly.config import Config
from anomaly.detectors.auto_grid import (  # noqa: F401 (re-exported: auto's public names)
    FINE_448,
    LITE0_160,
    ROW_TIMINGS,
    TIE,
    TIMINGS,
    candidate_config,
    candidate_name,
    choose,
    format_selection,
    without_timings,
)
from anomaly.detectors.base import Detector
from anomaly.detectors.registry import PLUGIN_HINT, REGISTRY, register
from anomaly.synthetic import alter, synthesize

# The candidate grid: each entry is a set of Config overrides (with "method") on top of that
# method's defaults (`Config.for_method`). Earlier entries win ties. Entries whose method is not
# registered are skipped; entries that fail to build or fit are recorded with their error.
CANDIDATES: list[dict] = [
    {"method": "patchknn"},  # the project's defaults (MobileNetV2 stages 3 + 6 at 224 px)
    {"method": "patchknn", "score_topk": 0.01},  # same fit; image score = mean of the top 1 %
    LITE0_160,
    FINE_448,
    {"method": "flow"},
    {"method": "meandiff"},
]
# Fields read only when a fitted detector scores images: candidates that differ only in these
# share one trial fit (and the final fit is the same).
SCORE_FIELDS = ("score_topk", "score_border")
HOLDOUT_FRACTION = 0.2  # of the training images, held out as normals and defect hosts
MIN_HOLDOUT = 4
MIN_IMAGES = MIN_HOLDOUT + 2  # held-out normals, and at least two trial training images
MAX_HOLDOUT = 40
TRIAL_IMAGES = 80  # training images of each trial fit (at most)
SYNTHETIC_PER_IMAGE = 2  # DRAEM-style synthetic defects made from each held-out image
ALTERED_PER_IMAGE = 3  # and quiet local ones (`alter`: blur, tint, faint overlay)
PERLIN_SCALES = (1, 6)  # lattice 2..32 cells per side: DRAEM's range without the half-image blobs


def check_enough(n_train_images: int, config: Config, n_good: int | None = None) -> None:
    """Refuse too few training images for auto, saying what was counted and what to do.

    `n_train_images`: what auto fits on, train/good less what `--val-fraction` holds out for
    the threshold (`n_good`: train/good's count, for the message). No-op for other methods; a
    run calls it before it writes its folder, `fit` again."""
    if config.method != "auto" or n_train_images >= MIN_IMAGES:
        return
    from anomaly.data.files import plain_test_count
    from anomaly.train import split_indices

    vf = config.val_fraction
    # the plain layout (good/ and defect folders) tests a fifth of good/: it trains on the rest
    plain = bool(config.data) and not os.path.isdir(os.path.join(config.data, "train"))
    folder = "good/ (the rest of it is tested)" if plain else "train/good"

    def trains_on(n: int) -> int:
        n = n - plain_test_count(n) if plain else n
        return len(split_indices(n, vf, 0)[0])

    needed = next(n for n in range(MIN_IMAGES, 10_000) if trains_on(n) >= MIN_IMAGES)
    got = f"got {n_train_images}"
    if vf > 0 and n_good is None:
        got += f" (a run fits auto on the training images of {folder} less what "
        got += f"--val-fraction {vf} holds out)"
    elif vf > 0 and n_good != n_train_images:
        got += f": the {n_good} training images of {folder} less the {n_good - n_train_images} "
        got += "that "
        got += f"--val-fraction {vf} holds out for the threshold"
    fixes = [f"Put at least {needed} images in {'good/' if plain else 'train/good'}"]
    if vf > 0 and (n_good is None or n_good >= MIN_IMAGES):
        fixes.append("pass --val-fraction 0 (the threshold then comes from training images)")
    raise ValueError(
        f"auto needs at least {MIN_IMAGES} training images (it holds {MIN_HOLDOUT} out to make "
        f"synthetic defects from and fits its trials on the rest), {got}. "
        + ", or ".join([*fixes, "choose a method (--method patchknn)"])
    )


def warn_small_size(config: Config) -> None:
    """Name an auto run whose --size is below a candidate's own size: that candidate sees its
    images enlarged from --size, blurred, and cannot be exported (`anomaly.export`)."""
    if config.method != "auto":
        return
    sizes = {candidate_config(config, c).size for c in CANDIDATES}
    above = sorted(s for s in sizes if s > config.size)
    if above:
        import warnings

        warnings.warn(
            f"--size {config.size}: auto's candidates work at up to {above[-1]} px, and those "
            f"at {', '.join(map(str, above))} px see the images enlarged from {config.size} px "
            f"(blurred); leave --size at auto's default ({Config.for_method('auto').size})",
            stacklevel=3,
        )


class _Images(Dataset):
    """Images as data set items a detector's `fit` accepts, at `size` x `size`: from an in-memory
    batch [N, C, H, W] (resized at once), or from `TrainingImages` (each read and resized when
    it is asked for, so the whole training set is never held twice)."""

    def __init__(self, images, size: int) -> None:
        self.size = size
        self.lazy = isinstance(images, TrainingImages)
        self.images = images if self.lazy else _resize_images(images, size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        if self.lazy:
            image = _resize_images(self.images[torch.tensor([i])], self.size)[0]
        else:
            image = self.images[i]
        return {
            "image": image,
            "mask": torch.zeros(image.shape[-2:]),
            "label": 0,
            "defect": "good",
            "path": f"auto-train-{i}",
        }


class TrainingImages:
    """The training images of a data set, read from it on demand: `images[indices]` (a tensor of
    indices) stacks those images as float32 [len(indices), C, H, W], as a tensor would."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.data[int(i)]["image"] for i in indices]).float()


def _resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp_(0, 1)


def _predict(
    detector: Detector, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N], maps [N, H, W] at the images' size) of a detector fitted at its own size."""
    for module in detector.modules().values():
        module.eval()
    height, width = images.shape[-2:]
    scores, maps = [], []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = _resize_images(chunk, detector.config.size).to(detector.device)
            s, m = detector.predict_batch(x)
            if m.shape[-2:] != (height, width):
                m = F.interpolate(
                    m[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
                )[:, 0]
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
    return torch.cat(scores), torch.cat(maps)


def _fit(settings: dict, run: Config, images, device: torch.device) -> Detector:
    """Build and fit one candidate on images [N, C, H, W] or `TrainingImages` (at the run's
    size), seeded by the run's seed."""
    config = candidate_config(run, settings).validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        detector = REGISTRY[config.method](config).to(device)
        detector.fit(_Images(images, config.size), None, progress=False)
    return detector


@register("auto")
class AutoDetector(Detector):
    """Label-free choice among `candidates` by synthetic-defect separation; then delegates.

    Args:
        config: the run's `Config` (reads size, channels, seed, device, batch_size); each
            candidate inherits data, channels, seed and device from it (`candidate_config`).
        candidates: the grid, a list of Config overrides with "method" (default `CANDIDATES`).
        trial_images, holdout_fraction, synthetic_per_image, altered_per_image: see the
            module constants.
    """

    def __init__(
        self,
        config: Config,
        candidates: list[dict] | None = None,
        trial_images: int = TRIAL_IMAGES,
        holdout_fraction: float = HOLDOUT_FRACTION,
        synthetic_per_image: int = SYNTHETIC_PER_IMAGE,
        altered_per_image: int = ALTERED_PER_IMAGE,
    ) -> None:
        super().__init__(config)
        self.candidates = [dict(c) for c in (CANDIDATES if candidates is None else candidates)]
        for c in self.candidates:
            if "method" not in c or c["method"] == "auto":
                raise ValueError(f"auto: candidate {c} needs a method other than auto")
        self.trial_images = int(trial_images)
        self.holdout_fraction = float(holdout_fraction)
        self.synthetic_per_image = int(synthetic_per_image)
        self.altered_per_image = int(altered_per_image)
        self.inner: Detector | None = None
        self.chosen: dict | None = None
        self.selection: dict | None = None

    # --- the detector contract ----------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules() if self.inner is not None else {}

    def to(self, device) -> AutoDetector:
        from anomaly.train import select_device

        self.device = select_device(str(device))  # one it lacks: refused, nothing changed
        if self.inner is not None:
            self.inner.to(self.device)
        return self

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = False,
        resume: bool = False,
        checkpoints=None,
    ) -> AutoDetector:
        """Choose a candidate on `train_data` (normal images only; `val_data` is not used),
        then fit it on all of `train_data`. Nothing is checkpointed during the search."""
        self.refuse_resume(resume)
        t_start = time.perf_counter()
        images = self._load(train_data)
        train, normals, defects, masks = self.split(images)
        truth = torch.cat([torch.zeros(len(normals)), torch.ones(len(defects))])
        held_out = torch.cat([normals, defects])
        pixel_truth = torch.cat([torch.zeros(len(normals), *masks.shape[-2:]), masks])
        del normals, defects, masks  # held_out and pixel_truth are copies: hold them once
        rows, fitted = [], {}
        try:
            for settings in self.candidates:
                rows.append(
                    self._trial(settings, train, held_out, truth, pixel_truth, fitted, progress)
                )
            index = choose(rows)
            self.chosen = dict(self.candidates[index])
            t0 = time.perf_counter()
            self.inner = _fit(self.chosen, self.config, images, self.device)
        except KeyboardInterrupt:  # a candidate's `train.Interrupted` names its epoch, but
            raise KeyboardInterrupt from None  # nothing of auto's is saved to resume from
        final_s = time.perf_counter() - t0
        self.selection = {
            "criterion": "image AUROC of held-out normal training images against synthetic "
            "defects made from them (pasted blobs and quiet local alterations); ties within "
            f"{TIE} broken by AUPRO on the "
            "synthetic masks (3 decimals), then image AUROC, then grid order",
            "seed": self.config.seed,
            "size": self.config.size,
            "train_images": len(images),
            "trial_images": len(train),
            "held_out_normals": int((truth == 0).sum()),
            "synthetic_defects": int((truth == 1).sum()),
            "candidates": rows,
            "chosen_index": index,
            "chosen": rows[index]["name"],
            "chosen_settings": self.chosen,
            "final_fit_s": round(final_s, 2),
            "total_s": round(time.perf_counter() - t_start, 2),
        }
        if progress:
            print(format_selection(self.selection))
        return self

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inner is None:
            raise RuntimeError("auto: call fit() (or load a run) before predicting")
        return _predict(self.inner, images, len(images))

    def state_dict(self) -> dict:
        if self.inner is None:
            raise RuntimeError("auto: nothing to save before fit()")
        return {
            "chosen": json.dumps(self.chosen),
            "selection": json.dumps(without_timings(self.selection)),  # times vary
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        chosen = json.loads(state["chosen"])
        method = chosen.get("method")
        if method not in REGISTRY:  # a ValueError: said whole, as the detector's own check
            raise ValueError(
                f"auto: the saved choice uses method {method!r}, which is not registered: "
                f"{PLUGIN_HINT}, or train a new run"
            )
        inner = REGISTRY[method](candidate_config(self.config, chosen))
        inner.load_state_dict(state["inner"])
        self.inner, self.chosen = inner.to(self.device), chosen
        self.selection = json.loads(state["selection"])

    # --- the steps ----------------------------------------------------------------------
    def _load(self, data) -> TrainingImages:
        """The training images of `data` (only "image" is used), each read once here (a data set
        with a cache keeps them) and again when needed: the held-out and trial images are
        copied, the final fit reads them from the data set again."""
        check_enough(len(data), self.config)
        for i in range(len(data)):  # a broken file stops the run now, not after the trials
            data[i]
        return TrainingImages(data)

    def split(self, images):
        """Seeded (trial training images, held-out normals, synthetic defects, their masks) of
        images [N, C, H, W] or `TrainingImages`."""
        train, normals, parts = self.synthetic_parts(images)
        shown = [m.flatten(1).amax(1) > 0 for _, m in parts]
        # an empty mask made no (visible) defect; each part filtered before the one copy
        defects = torch.cat([d[keep] for (d, _), keep in zip(parts, shown)])
        masks = torch.cat([m[keep] for (_, m), keep in zip(parts, shown)])
        return train, normals, defects, masks

    def synthetic_parts(self, images):
        """`split` before filtering: (trial training images, held-out normals, [(defects,
        masks) of DRAEM's pasted blobs, (defects, masks) of `alter`'s quiet ones]); a defect
        with an empty mask is not visible. `benchmarks/auto_proxy.py` scores the two apart."""
        n = len(images)
        gen = torch.Generator().manual_seed(self.config.seed)
        order = torch.randperm(n, generator=gen)
        n_out = min(MAX_HOLDOUT, n - 2, max(MIN_HOLDOUT, math.ceil(self.holdout_fraction * n)))
        normals = images[order[:n_out]]
        rest = order[n_out:]
        train = images[rest[: self.trial_images].sort().values]
        hosts = normals.repeat(self.synthetic_per_image, 1, 1, 1)
        pasted, pasted_masks = synthesize(hosts, generator=gen, p_anomaly=1.0, scales=PERLIN_SCALES)
        del hosts
        altered = alter(normals.repeat(self.altered_per_image, 1, 1, 1), gen)
        return train, normals, [(pasted, pasted_masks), altered]

    def _trial(
        self, settings: dict, train, held_out, truth, pixel_truth, fitted: dict, progress: bool
    ) -> dict:
        """Fit one candidate on the trial images (or reuse the fit of one that differs only in
        `SCORE_FIELDS`, kept in `fitted`) and score the held-out images: its selection row."""
        row = {"name": candidate_name(settings), "settings": dict(settings)}
        row |= dict.fromkeys(("size", "image_auroc", "pixel_auroc", "aupro", *ROW_TIMINGS))
        row |= dict.fromkeys(("fit_shared_with", "error"))
        if settings["method"] not in REGISTRY:
            row["error"] = f"method {settings['method']!r} is not available"
            return row
        key = json.dumps(
            {k: v for k, v in settings.items() if k not in SCORE_FIELDS}, sort_keys=True
        )
        try:
            row["size"] = candidate_config(self.config, settings).size  # its images' size
            t0 = time.perf_counter()
            if key in fitted:
                name, detector = fitted[key]
                detector = copy.copy(detector)  # shares the learned state, not the config
                detector.config = candidate_config(self.config, settings).validate()
                row["fit_shared_with"] = name
            else:
                detector = _fit(settings, self.config, train, self.device)
                fitted[key] = (row["name"], detector)
            row["fit_s"] = round(time.perf_counter() - t0, 2)
            _predict(detector, held_out[:1], 1)  # untimed: the first call builds sessions
            t1 = time.perf_counter()
            scores, maps = _predict(detector, held_out, self.config.batch_size)
            row["score_s"] = round(time.perf_counter() - t1, 2)
            for what, values in (("scores", scores), ("maps", maps)):
                if not torch.isfinite(values).all():  # ranks nothing: it loses, as a failed fit
                    raise ValueError(f"it gave NaN or infinite {what} on the held-out images")
        except (ValueError, RuntimeError, FileNotFoundError, KeyError) as err:
            row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            return row
        from anomaly.metrics import aupro, image_auroc, pixel_auroc, sorted_normal  # sklearn

        row["image_auroc"] = round(image_auroc(truth.numpy(), scores.numpy()), 4)
        masks, maps = pixel_truth.numpy(), maps.numpy()
        normal = sorted_normal(masks, maps)  # sorted once for both: half the metrics' time
        row["pixel_auroc"] = round(pixel_auroc(masks, maps, normal), 4)
        row["aupro"] = round(aupro(masks, maps, normal=normal), 4)
        if progress:
            print(
                f"auto: {row['name']}: image AUROC {row['image_auroc']}, AUPRO {row['aupro']}"
                f" ({row['fit_s']} s fit)"
            )
        return row
