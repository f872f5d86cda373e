"""Patch nearest neighbours on pretrained features: PatchCore, made fast on a CPU.

Roth, Pemula, Zepeda, Schölkopf, Brox and Gehler, "Towards Total Recall in Industrial Anomaly
Detection", CVPR 2022. Every training image gives one feature vector per patch (a cell of the
backbone's finest grid, see `anomaly.features.FeatureExtractor`). A greedy k-center coreset of
those vectors is the memory bank of "normal". A test patch's anomaly is its distance to the
nearest bank vectors; the map is the patch grid upsampled to the image and smoothed, and the image
score is the map's maximum (or its top-fraction mean, `config.score_topk`).

What differs from the paper, for speed and bounded memory on a laptop CPU:

- the backbone is small and cut early: MobileNetV2's stages features.3 and features.6 (strides 4
  and 8, 56-dimensional patch features) by default, or EfficientNet-Lite0's blocks 2 and 4, rather
  than a Wide ResNet-50's layer2 + layer3 (strides 8 and 16, 1536 dimensions). Every distance is
  many times cheaper, and the stride-4 grid sees thin and small defects;
- the image is mirrored outwards by `config.feature_pad` pixels before the backbone and the
  padded cells are cropped off again (`anomaly.features.FeatureExtractor`). With the backbone's
  zero padding instead, patches on the image's edge differ from every training patch in the
  middle of an image, and on real photos the highest score of most normal images sat on their
  edge, above the defects of the defective ones;
- the patch features are whitened (`config.whiten`, `anomaly.features.fit_whitening`): centred
  and rotated onto the principal directions of the training patches, each scaled by one over the
  square root of its variance raised by 0.1 of the mean variance. A distance then counts a
  change along a direction normal patches barely vary in (a faint stain, a shift of colour, the
  lost fine detail of a blur) as much as a large change along one they vary a lot in; on raw
  features the few high-variance directions decide every distance. Cutting the low-variance
  directions instead (a PCA to fewer dimensions) lost the quiet defects;
- the coreset runs on a fixed random projection to 128 dimensions (as the paper) and, above
  `MAX_PART` patches, on random parts of at most `MAX_PART` patches, each giving its share of the
  bank (`anomaly.detectors.coreset`). The greedy search costs bank size x candidates, which
  grows with the square of the data; the parts keep it linear. Up to `MAX_PART` patches it is
  the paper's greedy coreset exactly;
- the map is the patch grid upsampled bilinearly and smoothed with a Gaussian of
  `config.smooth_sigma` pixels (the paper's sigma 4 is for 224 px), done as two small matrix
  products (`map_matrix`);
- the image score is the maximum of that smoothed map, not of the raw patch scores, and is not
  re-weighted (the paper's Eq. 7, which gained nothing on the photo suite and cost the cookies
  0.005: docs/measurements.md): smoothing averages a patch with its neighbours, so one noisy
  patch decides less. It leaves out `config.score_border` pixels at the map's edges, where even
  mirrored padding leaves patches less like the bank than the middle of an image;
- speed knobs (`config.runtime`, `config.search_clusters`): onnxruntime can run the feature
  extractor (the same features within 1e-4, about half torch's CPU time on two cores) and the
  exact search (`anomaly.detectors.knn.ExactSearch`, the same distances within 1e-5, about half
  torch's CPU time: its matrix products come nearer the CPU's peak), and the search can be an
  inverted file (`anomaly.detectors.knn.BankIndex`) that compares each patch with
  the bank rows of its `search_probes` nearest k-means clusters only. Banks under
  `MIN_INDEXED_ROWS` rows are always searched exactly, and so is the ONNX export's graph;
- not every patch is searched (`config.search_refine`, `anomaly.detectors.knn.coarse_to_fine`):
  every other row and column first, then the tenth of the rest beside the highest distances;
  the others, the low ground of the map, are interpolated. The search is 32 % of its work on
  every patch; image AUROC was unchanged to 3 decimals on the cookies and every photo set.

Defaults (`METHOD_DEFAULTS["patchknn"]` in `anomaly.config`) were chosen on the cookie benchmark
and a suite of real photos together (`benchmarks/photos_sweep.py`), never on one data set:
MobileNetV2 stages 3 and 6, 224 px (small defects in photos need the resolution; the cost of
the search grows with the square of the side twice over, as patches and bank grow together), a
0.5 % coreset (a larger bank was not more accurate, and every bank row costs time on every
patch), 16 px of mirrored padding and an 8 px border (two stride-4 cells) left out of the image
score; `neighbors` 1, the paper's patch score; whitening with shrinkage 0.1 (confirmed on a
suite of another seed); `search_refine` 0.1 (numbers in docs/measurements.md).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from anomaly.detectors.base import Detector
from anomaly.detectors.coreset import greedy_coreset
from anomaly.detectors.knn import (
    SEARCH_ELEMENTS,
    SEARCH_ROWS,
    WEIGHT_MAX,
    BankIndex,
    ExactSearch,
    Int8Search,
    coarse_to_fine,
    nearest_distances,
    wants_int8,
)
from anomaly.detectors.ort_sessions import onnxruntime_session
from anomaly.detectors.registry import register
from anomaly.features import (
    DEFAULT_LAYERS,
    FeatureExtractor,
    build_backbone,
    fit_whitening,
    parse_layers,
)
from anomaly.maps import gaussian_kernel1d, image_score
from anomaly.prefetch import read_ahead
from anomaly.safe_files import available_memory, memory_words

__all__ = [
    "BankIndex",
    "ExactSearch",
    "PatchKNN",
    "greedy_coreset",
    "map_matrix",
    "nearest_distances",
]

CPU_CHUNK_PIXELS = 2**17  # images per backbone call on a CPU: 8 at 128 px, 2 at 256 px
ORT_CHUNK_PIXELS = 2**16  # images per onnxruntime call: 4 at 128 px, 1 from 182 px (cheapest)
MIN_INDEXED_ROWS = 1024  # smaller banks are always searched exactly: the full search is cheap


def map_matrix(n_out: int, n_in: int, sigma: float) -> torch.Tensor:
    """[n_out, n_in]: linear upsampling (as bilinear `F.interpolate`, align_corners=False), then
    Gaussian smoothing with mirrored borders (as `anomaly.maps.gaussian_blur`), along one axis.

    Both steps are linear and separable, so a patch grid P [h, w] becomes the smoothed
    full-size map A_h @ P @ A_w.T: two small matrix products instead of filtering every pixel.
    """
    eye = torch.eye(n_in).unsqueeze(1)  # n_in signals of length n_in
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].T
    if sigma <= 0:
        return up
    radius = int(4 * sigma + 0.5)
    kernel = gaussian_kernel1d(sigma, radius, dtype=torch.float64)
    blur = torch.zeros(n_out, n_out, dtype=torch.float64)
    rows = torch.arange(n_out)
    for tap, weight in zip(range(-radius, radius + 1), kernel):
        cols = (rows + tap) % (2 * n_out)  # scipy's "reflect": d c b a | a b c d | d c b a
        cols = torch.where(cols >= n_out, 2 * n_out - 1 - cols, cols)
        blur.index_put_((rows, cols), weight.expand(n_out), accumulate=True)
    return (blur @ up.double()).float()


class NoRoom(MemoryError):
    """patchknn's features would not fit in the free memory (`_check_room`)."""


def _check_room(need: int, n_images: int, size: int) -> None:
    """NoRoom, with the numbers, when the patch features of all training images would not fit
    in the memory this machine says is free (MemAvailable; a container's limit it does not
    show is met by the allocator)."""
    free = available_memory()
    if free is not None and need > free:
        raise NoRoom(
            f"patchknn holds the patch features of all {n_images} training images at once, "
            f"{memory_words(need)} at --size {size}, and {memory_words(free)} is free"
        )


@register("patchknn")
class PatchKNN(Detector):
    """PatchCore: distance of each patch's pretrained features to a coreset of normal patches.

    Args:
        config: the run's `Config`. Reads backbone, layers, channels, feature_pad,
            coreset_ratio (fraction of the training patches kept in the bank), neighbors (a
            patch's score is its mean distance to this many nearest bank patches), seed
            (coreset), batch_size, smooth_sigma, score_topk (0: the image score is the map's
            maximum) and score_border.
        layers: backbone stages to use; None = `config.layers`, else the backbone's stride-4 and
            stride-8 stages (`LAYERS`), else two mid-level stages (PatchCore's layer2+layer3).
        module: for backbone "encoder:<RUN_DIR>", the trained encoder (has `forward_features`).
    """

    # Finer stages than PatchCore's layer2+layer3 (stride 4 and 8): a stride-8 grid has
    # 8-pixel cells, too coarse for small defects.
    LAYERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.2", "blocks.4"),
        "mobilenet_v2": ("features.3", "features.6"),
    }

    def __init__(
        self, config, layers: tuple[str, ...] | None = None, module: nn.Module | None = None
    ) -> None:
        super().__init__(config)
        self.int8 = wants_int8(config)  # the search in 8 bits (ValueError where it cannot run)
        if module is None and config.backbone.startswith("encoder:"):
            # our own trained encoder (no pretraining at all): anomaly.pipeline loads the run
            raise ValueError(
                f"backbone {config.backbone!r}: pass the trained encoder as module=; "
                "anomaly.pipeline.build_detector does this from the run folder"
            )
        self.layers = tuple(
            layers
            or parse_layers(config.layers)
            or self.LAYERS.get(config.backbone)
            or DEFAULT_LAYERS.get(config.backbone, ())
        )
        backbone = build_backbone(
            config.backbone, in_channels=config.channels, layers=self.layers or None, module=module
        )
        self.extractor = FeatureExtractor(backbone, pad=config.feature_pad)
        self.bank: torch.Tensor | None = None
        self.bank_sq: torch.Tensor | None = None
        self.index: BankIndex | None = None  # config.search_clusters > 0
        self._sessions: dict = {}  # onnxruntime: the extractor by input shape, and "search"
        self._matrices: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"extractor": self.extractor}

    def to(self, device) -> PatchKNN:
        super().to(device)
        if self.bank is not None and self.bank.device != self.device:
            self._set_bank(self.bank)
        return self

    def _set_bank(self, bank: torch.Tensor) -> None:
        self.bank = bank.to(self.device, torch.float32).contiguous()
        self.bank_sq = (self.bank * self.bank).sum(1)
        self._sessions.pop("search", None)  # onnxruntime's search holds the bank as it was
        clusters = int(getattr(self.config, "search_clusters", 0))
        self.index = None
        if clusters > 0 and len(self.bank) >= MIN_INDEXED_ROWS:  # built from the bank alone
            probes = int(getattr(self.config, "search_probes", 1))
            self.index = BankIndex(self.bank, clusters, probes, seed=self.config.seed)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [B, h, w, D] of images [B, C, H, W] in [0, 1]."""
        self.extractor.eval()
        images = images.to(self.device, torch.float32)
        # On a CPU, small batches keep the activations in cache and reuse their memory (a large
        # batch makes every layer allocate fresh pages), the more so the larger the images
        # (docs/measurements.md).
        pixels = images.shape[-1] * images.shape[-2]
        if self._use_onnxruntime(images):
            session = self._session(images.shape[1:])
            step = max(1, ORT_CHUNK_PIXELS // pixels)
            chunks = [chunk.numpy() for chunk in images.contiguous().split(step)]
            feats = [torch.from_numpy(f) for f in session.run_all(chunks)]
            return torch.cat(feats).permute(0, 2, 3, 1)
        step = len(images)
        if images.device.type == "cpu":
            step = max(1, CPU_CHUNK_PIXELS // pixels)
        feats = [self.extractor(chunk) for chunk in images.split(step)]
        return torch.cat(feats).permute(0, 2, 3, 1)

    def _use_onnxruntime(self, images: torch.Tensor) -> bool:
        """config.runtime onnxruntime (or auto, with onnxruntime installed), on a CPU, and not
        while torch traces this detector (the ONNX export traces the torch extractor)."""
        runtime = getattr(self.config, "runtime", "torch")
        if runtime == "auto":
            runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
        return (
            runtime == "onnxruntime" and images.device.type == "cpu" and not torch.jit.is_tracing()
        )

    def _session(self, shape: torch.Size):
        """An onnxruntime session of the extractor for images of `shape` [C, H, W] (any batch),
        exported once per shape."""
        key = tuple(shape)
        if key not in self._sessions:
            example = torch.zeros(1, *key)
            self._sessions[key] = onnxruntime_session(self.extractor.eval(), example, "features")
        return self._sessions[key]

    def _search(self, queries: torch.Tensor) -> torch.Tensor:
        """Distance of each query [M, D] to its nearest bank row -> [M], by onnxruntime
        (`ExactSearch`, `SEARCH_ROWS` queries per call, fewer for a bank of more than
        `SEARCH_ELEMENTS` / `SEARCH_ROWS` rows; `nearest_distances` within 1e-5), or its 8-bit
        form (`Int8Search`, where `self.int8`: `wants_int8`, and as the run was trained)."""
        if "search" not in self._sessions:
            example = torch.zeros(2, self.bank.shape[1])
            kind = Int8Search if self.int8 else ExactSearch
            search = kind(self.bank, self.bank_sq)
            model = search.kept_model() if self.int8 else search  # bytes, or to export
            self._sessions["search"] = (onnxruntime_session(model, example, "distances"), search)
        session, search = self._sessions["search"]
        queries = queries.to(torch.float32).contiguous()
        step = max(8, min(SEARCH_ROWS, SEARCH_ELEMENTS // len(self.bank)))
        blocks = session.run_all([rows.numpy() for rows in queries.split(step)])
        out = torch.from_numpy(np.concatenate(blocks)) if blocks else torch.empty(0)
        return search.exact_rows(queries, out) if self.int8 else out

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = False,
        resume: bool = False,
        checkpoints=None,
    ):
        """Extract the patch features of all training images, keep a greedy coreset of them."""
        self.refuse_resume(resume)
        with torch.no_grad():
            return self._fit(train_data, progress)

    def _fit(self, train_data, progress: bool) -> PatchKNN:
        from tqdm.auto import tqdm

        self._set_whitening(None, None)  # fitted again: features as the backbone gives them,
        self.bank = None  # and no bank until this fit ends (a failed one: predict refuses)
        loader = train_data if isinstance(train_data, DataLoader) else self.loader(train_data)
        # the next batch decoded by a thread while this one is embedded: nothing here draws
        # random numbers, so a data set that does draws them in the same order as without it
        batches = read_ahead(loader) if loader.num_workers == 0 else loader
        feats, filled = None, 0
        for batch in tqdm(
            batches, total=len(loader), desc="patchknn features", disable=not progress, leave=False
        ):
            f = self.embed(batch["image"]).reshape(-1, self.extractor.dim)
            if feats is None:  # one allocation for all patches: peak memory = 1x the features
                rows = len(f) // len(batch["image"]) * len(loader.dataset)
                if f.device.type == "cpu":  # refused now, not killed half-way (or swapping)
                    _check_room(rows * f.shape[1] * 4, len(loader.dataset), self.config.size)
                feats = torch.empty(rows, f.shape[1], device=f.device)
            elif filled + len(f) > len(feats):  # a loader longer than its dataset says
                feats = torch.cat([feats, torch.empty_like(feats)])
            feats[filled : filled + len(f)] = f
            filled += len(f)
        if feats is None:
            raise ValueError("fit() got an empty data set: there are no images to learn from")
        feats = feats[:filled]
        shrink = float(getattr(self.config, "whiten", 0.0))
        if shrink > 0:  # whiten the features; from now on the extractor does it itself
            mean, matrix = fit_whitening(feats, shrink, seed=self.config.seed)
            for rows in feats.split(65_536):
                rows.copy_((rows - mean) @ matrix)
            self._set_whitening(mean, matrix)
        n = max(1, round(self.config.coreset_ratio * filled))
        idx = greedy_coreset(feats, n, seed=self.config.seed, progress=progress)
        self._set_bank(feats[idx].clone())
        rows = len(self.bank)
        for flag, value in (
            ("--neighbors", self.config.neighbors),
            ("--search-clusters", self.config.search_clusters),
        ):
            if value > rows:
                warnings.warn(
                    f"{flag} {value} is more than the memory bank's {rows} rows, so {rows} are "
                    f"used: the run behaves as {flag} {rows} (a larger --coreset-ratio or more "
                    "training images make the bank larger)",
                    stacklevel=3,
                )
        return self

    def _set_whitening(self, mean: torch.Tensor | None, matrix: torch.Tensor | None) -> None:
        self.extractor.set_whitening(mean, matrix)
        self._sessions.clear()  # onnxruntime sessions hold the extractor as it was

    @torch.inference_mode()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to the memory bank: [B, h, w]."""
        if self.bank is None:
            raise RuntimeError("patchknn: call fit() (or load a run) before predicting")
        return self.grid_distances(self.embed(images))

    def grid_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Distances of patch features [B, h, w, D] to the bank -> [B, h, w], by the run's
        search on the patches `config.search_refine` chooses (`coarse_to_fine`)."""
        refine = float(getattr(self.config, "search_refine", 1.0))  # runs before it: 1
        return coarse_to_fine(features, self._distances, refine)

    def _distances(self, queries: torch.Tensor) -> torch.Tensor:
        """Distance of each patch feature [M, D] to the bank -> [M], by the run's search (in the
        ONNX export's trace: the exact search in torch, or an int8 run's `Int8Search.traced`)."""
        if self.index is not None and self.config.neighbors == 1 and not torch.jit.is_tracing():
            return self.index.nearest(queries)
        if self.int8 and torch.jit.is_tracing():  # the ONNX export: the run's 8-bit search
            held = self._sessions.get("search")
            search = held[1] if held else Int8Search(self.bank, self.bank_sq)
            return search.traced(queries)
        if self.config.neighbors == 1 and self._use_onnxruntime(queries):
            return self._search(queries)
        return nearest_distances(queries, self.bank, self.bank_sq, self.config.neighbors)

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.patch_scores(images)
        (h, w), (height, width) = patches.shape[-2:], images.shape[-2:]
        key = (h, w, height, width, self.config.smooth_sigma, patches.device)
        if key not in self._matrices:
            sigma = self.config.smooth_sigma
            self._matrices[key] = (
                map_matrix(height, h, sigma).to(patches.device),
                map_matrix(width, w, sigma).to(patches.device),
            )
        rows, cols = self._matrices[key]
        maps = rows @ patches @ cols.T  # = gaussian_blur(bilinear upsampling(patches))
        return image_score(maps, self.config.score_topk, self.config.score_border), maps

    def state_dict(self) -> dict:
        if self.bank is None:
            raise RuntimeError("patchknn: nothing to save before fit()")
        mean, matrix = self.extractor.whitening or (None, None)
        return {
            "encoder_sha256": self.encoder_sha256,  # encoder:RUN: which model of it (pipeline)
            "bank": self.bank.cpu(),
            "backbone": self.config.backbone,
            "layers": list(self.layers),
            "dim": self.extractor.dim,
            "pool": self.extractor.pool,
            "stride": self.extractor.stride,
            "pad": self.extractor.pad,
            "whiten_mean": mean,
            "whiten_matrix": matrix,
            "search_precision": self.search_precision(),  # what scored its held-out images
            "int8_weight_max": WEIGHT_MAX,  # the bank's rounding, if that was int8
        }

    def search_precision(self) -> str:
        """How this detector searches the bank here: "int8" (onnxruntime on a CPU,
        `wants_int8`) or "float32"."""
        return "int8" if self.int8 and self.device.type == "cpu" else "float32"

    def load_state_dict(self, state: dict) -> None:
        mine = {
            "backbone": self.config.backbone,
            "layers": list(self.layers),
            "dim": self.extractor.dim,
            "pool": self.extractor.pool,
            "pad": self.extractor.pad,
        }
        theirs = {key: state.get(key, 0) for key in mine}  # banks saved before padding: pad 0
        bank = state["bank"]
        if bank.ndim != 2 or len(bank) == 0 or not torch.isfinite(bank).all():
            raise RuntimeError(f"patchknn memory bank {list(bank.shape)} is empty or not finite")
        if theirs != mine or bank.shape[1] != self.extractor.dim:
            raise RuntimeError(
                f"patchknn memory bank was made with features {theirs} ({bank.shape[1]} "
                f"dimensions), this detector makes {mine}"
            )
        whitened = state.get("whiten_matrix") is not None
        if whitened != (float(getattr(self.config, "whiten", 0.0)) > 0):
            raise RuntimeError(
                f"patchknn memory bank was made {'with' if whitened else 'without'} whitened "
                f"features, but this run's config says whiten={self.config.whiten}: the run "
                "folder's model.pt and config.json disagree; train the run again"
            )
        self._set_whitening(state.get("whiten_mean"), state.get("whiten_matrix"))
        self._set_bank(state["bank"])
        saved = state.get("search_precision")  # None: saved before it was recorded
        if saved == "float32" and self.config.search_precision == "auto":
            self.int8 = False  # trained where int8 could not run (a GPU): search so here too
        elif saved == "int8" and self.config.search_precision == "auto":
            self.int8 = wants_int8(self.config, fast=True)  # as trained, wherever it can run
        if saved in ("int8", "float32") and saved != self.search_precision():
            fix = (
                "pip install onnx onnxruntime, and score on a CPU"
                if saved == "int8"
                else "score it on a GPU, as it was trained"
            )
            warnings.warn(
                f"patchknn: this run searched its memory bank in {saved} where it was trained "
                "(its held-out scores, and so its threshold, are of that search), and searches "
                f"it in {self.search_precision()} here: scores differ by up to about 0.6 % "
                "(docs/measurements.md), so a part scored near the threshold can change "
                f"verdict. To search as it did: {fix}",
                stacklevel=2,
            )
        rounded = state.get("int8_weight_max")  # None: saved before the bank had 7 bits
        if saved == "int8" == self.search_precision() and rounded != WEIGHT_MAX:
            warnings.warn(
                "patchknn: this run was trained before the 8-bit search rounded its bank to 7 "
                "bits (2026-12-04; with 8, CPUs without VNNI saturated some sums), so its "
                "held-out scores, and its threshold, are of the older rounding: today's scores "
                "differ from those about as the 8-bit search differs from the float one (up to "
                "about 0.6 %; more where that CPU saturated). Train the run again to score as "
                "its threshold was set",
                stacklevel=2,
            )
        if self._use_onnxruntime(torch.empty(0, device=self.device)):  # loaded = ready: the
            size = self.config.size  # export to onnxruntime costs a second or two, once
            self._session(torch.Size((self.config.channels, size, size)))
            if self.config.neighbors == 1 and self.index is None:
                self._search(torch.zeros(1, self.extractor.dim))
