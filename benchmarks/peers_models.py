"""The models `peers.py` runs: torchvision's MobileNetV2 with its ImageNet weights (the
yardstick backbone's stages), and anomalib's PatchCore, PaDiM and FastFlow on it.

anomalib (the `peers` virtualenv of benchmarks/README.md) is imported only to fit those three.
anomalib reads its training
images from a folder: `peers.py` gives it `staged_train`'s copy of the very images (and pixels)
`anomaly.data` trains this project's methods on, since the two readers differ (anomalib
searches train/good recursively, takes other extensions, turns 16-bit PNGs white and ignores
EXIF orientation). Everything anomalib writes goes into a working folder `peers.py` removes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import numpy as np
import torch

Predict = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray] | None]

BACKBONE_NODES = ("features.6", "features.13")  # PatchCore's stages of MobileNetV2
PADIM_NODES = ("features.3", "features.6", "features.13")


def mobilenet_v2() -> torch.nn.Module:
    """torchvision's MobileNetV2 with its ImageNet weights, offline (hash-checked file)."""
    import torchvision

    from anomaly.features import mobilenet_v2_weights

    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


class Stages(torch.nn.Module):
    """MobileNetV2 truncated after its deepest requested node, returning those nodes' maps."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.nodes = list(nodes)
        self.body = create_feature_extractor(mobilenet_v2(), return_nodes=self.nodes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return [out[n] for n in self.nodes]


def staged_train(root: Path, into: Path) -> int:
    """Write the training images `anomaly.data` lists for `root`, decoded by its reader (EXIF
    orientation applied, 16-bit and alpha images converted as it converts them), as 8-bit RGB
    PNGs at their own size into `into`/train/good; returns their number."""
    from PIL import Image

    from anomaly.data import AnomalyDataset
    from anomaly.data.folder import read_image

    good = into / "train" / "good"
    good.mkdir(parents=True)
    paths = AnomalyDataset(root, "train", cache=False).paths
    for i, path in enumerate(paths):
        a = read_image(path)
        a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a
        Image.fromarray(np.round(a * 255).astype(np.uint8), "RGB").save(good / f"{i:05d}.png")
    return len(paths)


def fit_anomalib(
    method: str, staged: Path, size: int, args, work: Path
) -> tuple[Predict, float, float]:
    """Fit anomalib's `method` on `staged`/train/good (`staged_train`), writing only into
    `work`; returns (predict, fit wall s, fit CPU s)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Fastflow, Padim, Patchcore

    common = {"post_processor": False, "evaluator": False, "visualizer": False}
    if method == "patchcore":
        cls = Patchcore
        model = cls(
            backbone=mobilenet_v2(),
            layers=list(BACKBONE_NODES),
            coreset_sampling_ratio=args.patchcore_coreset,
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
    elif method == "padim":
        cls = Padim
        model = cls(
            backbone=mobilenet_v2(),
            layers=list(PADIM_NODES),
            n_features=100,
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
    else:
        cls = Fastflow
        model = cls(
            backbone="resnet18",
            pre_trained=False,  # replaced below: nothing loaded
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
        mobilenet_fastflow(model.model, size)
    datamodule = Folder(  # training images only: everyone is scored on peers.py's test tensors
        name="staged",
        root=staged,
        normal_dir="train/good",
        test_split_mode="none",
        val_split_mode="none",
        train_batch_size=args.batch * 4,
        eval_batch_size=args.batch * 4,
        num_workers=0,
        seed=args.seed,
    )
    engine = Engine(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(work / method),
        barebones=True,  # no checkpoint files, no logs
        limit_val_batches=0,
        num_sanity_val_steps=0,
        max_epochs=args.fastflow_epochs,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    engine.fit(model=model, datamodule=datamodule)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()

    @torch.no_grad()
    def predict(x):
        out = model(x)  # pre-processor (resize + ImageNet normalisation), then the torch model
        maps = out.anomaly_map.reshape(len(x), *out.anomaly_map.shape[-2:])
        return out.pred_score.reshape(len(x)).numpy(), maps.numpy()

    return predict, wall, cpu


def mobilenet_fastflow(net, size: int) -> None:
    """Give anomalib's FastflowModel MobileNetV2 stages (strides 4, 8, 16) in place of
    ResNet-18's, with layer norms and flow blocks of the matching shapes."""
    from anomalib.models.image.fastflow.torch_model import create_fast_flow_block

    net.feature_extractor = Stages(PADIM_NODES)
    with torch.no_grad():
        maps = net.feature_extractor(torch.zeros(1, 3, size, size))
    shapes = [list(m.shape[1:]) for m in maps]
    net.norms = torch.nn.ModuleList(torch.nn.LayerNorm(s, elementwise_affine=True) for s in shapes)
    net.fast_flow_blocks = torch.nn.ModuleList(
        create_fast_flow_block(
            input_dimensions=s, conv3x3_only=False, hidden_ratio=1.0, flow_steps=8
        )
        for s in shapes
    )
