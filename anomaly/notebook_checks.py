"""Notebook 07's demonstration of the loader's checks: common problems made in a small copy of
the user's data folder, and what the loader says of each (`anomaly.notebook_photos` re-exports
`loader_checks` and `checks_text`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def _small_copy(data: Path, to: Path) -> None:
    """A few files of `data` in the MVTec layout, whatever its own (good/ alone, too): two
    training images and a good test image from its good ones, and a defective test image made
    from one of them, its mask a square in the middle."""
    from PIL import Image, ImageDraw

    from anomaly.data.files import IMAGE_EXTENSIONS

    good = data / "train" / "good" if (data / "train" / "good").is_dir() else data / "good"
    images = sorted(
        f for f in good.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.name[0] != "."
    )[:3]
    for f, where in zip(images, ("train/good", "train/good", "test/good")):
        (to / where).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, to / where / f.name)
    (to / "test" / "scratch").mkdir(parents=True)
    (to / "ground_truth" / "scratch").mkdir(parents=True)
    shutil.copy(images[0], to / "test" / "scratch" / f"000{images[0].suffix}")
    with Image.open(images[0]) as im:
        mask, (w, h) = Image.new("L", im.size), im.size
    ImageDraw.Draw(mask).rectangle((w // 3, h // 3, w // 2, h // 2), fill=255)
    mask.save(to / "ground_truth" / "scratch" / "000_mask.png")


def _corrupt_image(root: Path) -> str:
    (root / "train" / "good" / "IMG_0042.png").write_text("not an image: a file saved wrongly")
    return "train"


def _empty_folder(root: Path) -> str:
    (root / "test" / "dent").mkdir()
    return "test"


def _stray_mask(root: Path) -> str:
    masks = next((root / "ground_truth").iterdir())
    shutil.copy(next(masks.iterdir()), masks / "999_mask.png")
    return "test"


PROBLEMS = {
    "a file that is not an image": _corrupt_image,
    "an empty defect folder": _empty_folder,
    "a mask that matches no image": _stray_mask,
}


def loader_checks(data: Path) -> list[tuple[str, str]]:
    """Each problem of `PROBLEMS` made in a small copy of `data`, and the `DataError` message
    the loader raises for it, paths shown from the copy's root (`my-photos/`).

    A problem the loader lets through is reported as "not caught" (the tests assert none is).
    """
    from anomaly.data import AnomalyDataset, DataError

    found = []
    with tempfile.TemporaryDirectory(prefix="anomaly-checks-") as tmp:
        for i, (problem, make) in enumerate(PROBLEMS.items()):
            root = Path(tmp) / str(i) / "my-photos"
            _small_copy(Path(data), root)
            split = make(root)
            try:
                AnomalyDataset(root, split, size=32).check()
                message = "not caught"
            except DataError as err:
                message = str(err).replace(str(root.parent) + "/", "")
            found.append((problem, message))
    return found


def checks_text(found: list[tuple[str, str]]) -> str:
    """The caught problems as the command line shows them (`error: <message>`)."""
    return "\n\n".join(f"{problem}:\n  error: {message}" for problem, message in found)
