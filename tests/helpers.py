"""Test data shared by the test modules: tiny configs, CLI flags and in-memory image sets.

Import it as `from helpers import ...` (pytest puts tests/ on the path). The on-disk data set is
the `tiny_cookies` fixture of conftest.py; everything here is small enough to run in seconds.
`tree_bytes` is what a folder holds, to compare before and after a command; `plain_set` writes a
small data set in the plain layout (good/ and stain/); `patchknn_export` trains and exports a
tiny run, `deploy_copy` copies the deployable files beside each other, `fresh_python` runs code in
a new interpreter.

The in-memory image sets are the one place tests make images; each is seeded, so a test gets the
same images every run, and each item has AnomalyDataset's format ({"image" [C, H, W] in [0, 1],
"mask" [H, W], "label" 0/1, "defect", "path"}):

- `RandomImages`: uniform noise; `defective=True` makes the top-left quarter white.
- `Textures`: smooth random textures (bicubic-upsampled noise, grey or colour); the last
  `defective` images get a bright 14x14 square (patchknn, auto).
- `Blobs`: a bright disc on a dark background, normal only (DRAEM).
- `Stripes`: sine stripes of random phase; `defective=True` adds a bright 6x6 square (flow).
- `FlatImages`: flat grey RGB with a little noise; the last `defective` get a dark disc (meandiff).
- `ImagesOnly`: wraps a set so that reading any key but "image" fails (proves labels unread).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from torch.utils.data import Dataset

from anomaly.config import Config


def fresh_python(code: str, cwd=None, env: dict | None = None):
    """Run `code` in a fresh Python (`cwd`: where copied files are; `env`: instead of this
    process's): its CompletedProcess, output as text, whatever its exit status."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def deploy_copy(folder: Path, name: str = "onnx_predict.py") -> Path:
    """anomaly/onnx_predict.py copied into `folder` as `name`, with onnx_checks.py beside it: a
    deployment without the package (README, "Deploying without the package")."""
    import anomaly.onnx_checks
    import anomaly.onnx_predict

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(anomaly.onnx_predict.__file__, folder / name)
    shutil.copy(anomaly.onnx_checks.__file__, folder / "onnx_checks.py")
    return folder / name


def patchknn_export(data: Path, run: Path, out: Path | None = None, size: int = 64) -> Path:
    """A default patchknn run on `data` at `size` trained into `run`, and its ONNX export (at
    `out`, default RUN/model.onnx): its path."""
    from anomaly.export import export_onnx
    from anomaly.pipeline import train_run

    config = Config.for_method("patchknn", data=str(data), size=size, device="cpu")
    train_run(config, run, progress=False)
    return export_onnx(run, out or run / "model.onnx")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too: a staging folder left behind shows here), by its
    path relative to `root`, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def plain_set(root: Path, n_good: int = 20, n_defect: int = 4, seed: int = 0) -> Path:
    """A plain-layout data set at `root`: `n_good` noisy grey-ish 32 px images in good/
    (000.png, ...) and `n_defect` in stain/ with a bright square; seeded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "good").mkdir(parents=True)
    (root / "stain").mkdir()
    for i in range(n_good):
        Image.fromarray(rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)).save(
            root / "good" / f"{i:03d}.png"
        )
    for i in range(n_defect):
        a = rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)
        a[10:20, 10:20] = 250
        Image.fromarray(a).save(root / "stain" / f"{i:03d}.png")
    return root


def tiny_config(data, method: str = "ae", **overrides) -> Config:
    """A config that trains in about a second on the tiny cookie set (64 px, grey, width 8)."""
    base = {
        "method": method,
        "data": str(data),
        "size": 64,
        "channels": 1,
        "epochs": 2,
        "batch_size": 4,
        "width": 8,
        "latent": 16,
        "seed": 3,
        "device": "cpu",
        "patience": 0,
        "corrupt": 0.0,
    }
    base.update(overrides)
    return Config(**base)


def tiny_flags(data, **overrides) -> list[str]:
    """`train` flags for the same tiny auto-encoder as `tiny_config`."""
    flags = {
        "--data": str(data),
        "--method": "ae",
        "--size": "64",
        "--channels": "1",
        "--epochs": "2",
        "--batch-size": "4",
        "--width": "8",
        "--latent": "16",
        "--seed": "3",
        "--device": "cpu",
        "--patience": "0",
        "--corrupt": "0",
    }
    flags.update({k: str(v) for k, v in overrides.items()})
    return [x for item in flags.items() for x in item]


def cli_in_fresh_python(*argv) -> tuple[int, set[str]]:
    """`python -m anomaly ARGV` in a new interpreter: its exit code and the top-level packages
    it imported (what a command's start-up pays for)."""
    import subprocess
    import sys

    code = (
        "import sys; from anomaly.cli import main; "
        f"rc = main({[str(a) for a in argv]!r}); "
        "print(rc, ' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    rc, _, modules = (done.stdout.strip().splitlines() or [""])[-1].partition(" ")
    assert rc.lstrip("-").isdigit(), done.stdout + done.stderr
    return int(rc), set(modules.split())


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run folder, for a test that damages it."""
    shutil.copytree(run, dest)
    return dest


def good_test_folder(data: Path, folder: Path) -> Path:
    """`folder`, made, holding a copy of each good test image of the data set `data` (a flat
    folder of good images, as `threshold --good-images` takes)."""
    folder.mkdir()
    for f in sorted((data / "test" / "good").iterdir()):
        shutil.copy(f, folder / f.name)
    return folder


class RandomImages(Dataset):
    """`n` seeded random images [channels, size, size] in AnomalyDataset's item format."""

    def __init__(
        self, n: int, size: int = 32, channels: int = 1, seed: int = 0, defective: bool = False
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, channels, size, size, generator=g)
        self.masks = torch.zeros(n, size, size)
        if defective:
            self.images[:, :, : size // 4, : size // 4] = 1.0
            self.masks[:, : size // 4, : size // 4] = 1.0
        self.label = int(defective)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": self.label,
            "defect": "blob" if self.label else "good",
            "path": f"random/{i:03d}.png",
            "mask_known": True,
        }


class _Labelled(Dataset):
    """Items from `images` [N, C, H, W], `masks` [N, H, W] and `labels`; a defective item's
    kind is the class's `DEFECT`."""

    DEFECT = "defect"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": self.labels[i],
            "defect": self.DEFECT if self.labels[i] else "good",
            "path": f"img{i}.png",
        }


class Textures(_Labelled):
    """`n` smooth random textures in [0.5 - contrast / 2, 0.5 + contrast / 2]; the last
    `defective` get a bright 14x14 square (mask included)."""

    DEFECT = "square"

    def __init__(
        self,
        n: int = 14,
        defective: int = 0,
        seed: int = 0,
        size: int = 64,
        channels: int = 1,
        contrast: float = 0.3,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.rand(n, channels, size // 8, size // 8, generator=gen)
        self.images = (
            0.5
            - contrast / 2
            + contrast
            * torch.nn.functional.interpolate(
                noise, size=(size, size), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        )
        self.masks = torch.zeros(n, size, size)
        self.labels = [0] * (n - defective) + [1] * defective
        for i in range(n - defective, n):
            y, x = torch.randint(4, size - 20, (2,), generator=gen).tolist()
            self.images[i, :, y : y + 14, x : x + 14] = 1.0
            self.masks[i, y : y + 14, x : x + 14] = 1


class Blobs(Dataset):
    """Tiny normal images (a bright disc on a dark background) as the data sets' item dicts."""

    def __init__(self, n: int = 8, size: int = 32, channels: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.images = []
        for _ in range(n):
            cy, cx = (size / 2 + 3 * (torch.rand(2, generator=g) - 0.5)).tolist()
            disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 3) ** 2).float()
            img = 0.2 + 0.6 * disc + 0.05 * torch.rand(size, size, generator=g)
            self.images.append(img.expand(channels, size, size).clone())
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": torch.zeros(self.size, self.size),
            "label": 0,
            "defect": "good",
            "path": f"blob_{i}.png",
        }


class Stripes(Dataset):
    """Grey striped images with a random phase; `defective` ones have a bright 6x6 square."""

    def __init__(self, n: int, defective: bool = False, seed: int = 0, size: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        xx = torch.arange(size, dtype=torch.float32).expand(size, size)
        self.items = []
        for i in range(n):
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            image = 0.5 + 0.2 * torch.sin(2 * math.pi * xx / 8 + phase)
            image = (image + 0.02 * torch.randn(size, size, generator=g)).clamp(0, 1)
            mask = torch.zeros(size, size, dtype=torch.uint8)
            if defective:
                y0, x0 = (int(v) for v in torch.randint(4, size - 10, (2,), generator=g))
                image[y0 : y0 + 6, x0 : x0 + 6] = 1.0
                mask[y0 : y0 + 6, x0 : x0 + 6] = 1
            self.items.append(
                {
                    "image": image[None],
                    "mask": mask,
                    "label": int(defective),
                    "defect": "spot" if defective else "good",
                    "path": f"img{i}.png",
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class FlatImages(_Labelled):
    """Flat grey RGB images with a little noise; the last `defective` get a dark blob (mask
    included)."""

    DEFECT = "blob"

    def __init__(self, n: int, defective: int = 0, seed: int = 0, size: int = 48) -> None:
        gen = torch.Generator().manual_seed(seed)
        level = 0.5 + 0.05 * torch.rand(n, 1, 1, 1, generator=gen)
        self.images = (level + 0.02 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)
        self.masks = torch.zeros(n, size, size)
        self.labels = [0] * (n - defective) + [1] * defective
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        for i in range(n - defective, n):
            y, x = torch.randint(8, size - 8, (2,), generator=gen).tolist()
            blob = (yy - y) ** 2 + (xx - x) ** 2 <= 16
            self.images[i, :, blob] = 0.25
            self.masks[i, blob] = 1


class _ImageOnly(dict):
    """A data set item whose every key but "image" fails."""

    def __getitem__(self, key):
        if key != "image":
            raise AssertionError(f"a training item's {key!r} was read")
        return super().__getitem__(key)


class ImagesOnly(Dataset):
    """`data`'s images, in items whose every other key fails when read: proves a method trains
    without labels, masks or paths."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return _ImageOnly(
            image=self.data[i]["image"], label=None, mask=None, defect=None, path=None
        )
