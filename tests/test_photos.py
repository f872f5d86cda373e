"""The photo suite generator: determinism, masks, counts, disjoint regions, no reserved photo."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import numpy as np
import pytest
from helpers import tree_bytes
from PIL import Image

from anomaly.data import AnomalyDataset, make_photos, photos, photos_defects

FEW = ["page", "coins"]  # the two smallest sets: quick to make twice


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return root, make_photos(root, seed=0, tiny=True)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_photos(tmp_path / "a", seed=3, tiny=True, sets=FEW)
    make_photos(tmp_path / "b", seed=3, tiny=True, sets=FEW)
    fa, fb = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert fa == fb and len(fa) == 2 * (6 + 3 + 6 + 6) + 1
    make_photos(tmp_path / "c", seed=4, tiny=True, sets=FEW)
    fc = tree_bytes(tmp_path / "c")
    assert fa.keys() == fc.keys()
    pngs = [k for k in fa if k.endswith(".png")]
    assert sum(fa[k] != fc[k] for k in pngs) == len(pngs)  # every image differs
    assert json.loads(fa["manifest.json"]) == a


def test_every_set_counts_and_masks(suite):
    root, manifest = suite
    assert len(manifest["sets"]) >= 8
    assert manifest["generator"] == photos.GENERATOR
    for name, s in manifest["sets"].items():
        folder = root / name
        found = {f"{p.parent.parent.name}/{p.parent.name}": 0 for p in folder.glob("[tr]*/*/*.png")}
        for p in folder.glob("[tr]*/*/*.png"):
            found[f"{p.parent.parent.name}/{p.parent.name}"] += 1
        assert found == s["counts"], name
        assert len(s["defect_kinds"]) >= 5 and len(s["counts"]) == 2 + len(s["defect_kinds"])
        masks = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*_mask.png"))
        assert masks == sorted(e["mask"] for e in s["images"].values() if e["mask"]), name
        for rel, entry in s["images"].items():
            with Image.open(folder / rel) as im:
                assert im.size == (s["size"], s["size"])
                assert im.mode == ("RGB" if s["colour"] else "L")
            if entry["kind"] == "good":
                assert entry["mask"] is None and entry["defect_area"] == 0
                continue
            assert (
                entry["mask"] == f"ground_truth/{entry['kind']}/{rel.split('/')[-1][:-4]}_mask.png"
            )
            mask = np.asarray(Image.open(folder / entry["mask"]))
            assert mask.shape == (s["size"], s["size"])
            assert set(np.unique(mask)) == {0, 255}, f"{name}/{entry['mask']} is not binary"
            assert (mask > 0).sum() == entry["defect_area"] > 0
            assert 0.0002 < entry["area_fraction"] < 0.08, f"{name}/{rel}"


def test_defects_change_what_their_masks_cover(suite):
    _, manifest = suite
    for name, s in manifest["sets"].items():
        for rel, entry in s["images"].items():
            if entry["kind"] != "good":  # drawn until visible (blur: a weaker bar)
                assert entry["mean_change"] >= 0.02, f"{name}/{rel}: {entry}"


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_train_and_test_regions_are_disjoint(suite):
    _, manifest = suite
    for name, s in manifest["sets"].items():
        train, test = s["regions"]["train"], s["regions"]["test"]
        assert not any(_overlap(a, b) for a in train for b in test), name
        for rel, entry in s["images"].items():
            box, other = entry["crop"], test if entry["split"] == "train" else train
            own = train if entry["split"] == "train" else test
            assert not any(_overlap(box, r) for r in other), f"{name}/{rel} {box}"
            assert any(
                r[0] <= box[0] and r[1] <= box[1] and box[2] <= r[2] and box[3] <= r[3] for r in own
            ), f"{name}/{rel} {box} lies outside its regions"
            assert box[2] - box[0] == box[3] - box[1] == s["crop"]


def test_no_reserved_photo_is_used(suite):
    _, manifest = suite
    reserved = ("brick", "grass", "gravel", "elpv")
    used = {s["photo"] for s in manifest["sets"].values()} | set(photos.SOURCES)
    assert not any(r in key for r in reserved for key in used)
    calls = " ".join(call for _, call in photos.SOURCES.values())
    assert not any(r in calls for r in reserved)
    for module in (photos, photos_defects):  # nothing loads them by any other route
        code = inspect.getsource(module)
        assert not re.search(r"\b(brick|grass|gravel)\s*\(|import\s+elpv|elpv_dataset", code)


def test_readable_by_the_dataset(suite):
    root, manifest = suite
    for name, s in manifest["sets"].items():
        test = AnomalyDataset(root / name, "test", size=64, channels=3)
        train = AnomalyDataset(root / name, "train", size=64, channels=3)
        assert len(train) == s["counts"]["train/good"]
        assert len(test) == sum(v for k, v in s["counts"].items() if k.startswith("test/"))
        item = test[len(test) - 1]
        assert item["label"] == 1 and item["mask"].sum() > 0 and item["image"].shape == (3, 64, 64)


def test_overwrite_only_replaces_its_own_folder(tmp_path):
    root = tmp_path / "suite"
    make_photos(root, seed=0, tiny=True, sets=["page"])
    make_photos(root, seed=0, tiny=True, sets=["page"])  # the same suite again: fine
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="overwrite=True"):
        make_photos(root, seed=1, tiny=True, sets=["coins"])
    make_photos(root, seed=1, tiny=True, sets=["coins"], overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["coins", "manifest.json", "notes.txt"]
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    for manifest in (None, {"generator_version": "1.0", "preset": "toy"}):  # e.g. cookies
        if manifest is not None:
            (other / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=f"{re.escape(str(other))} is not empty and was not"):
            make_photos(other, tiny=True, sets=["page"], overwrite=True)
    assert (other / "train").is_dir()


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown photo sets"):
        make_photos(tmp_path, sets=["brick"])
    with pytest.raises(ValueError, match="seed"):
        make_photos(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="train"):
        make_photos(tmp_path, train=0)
    with pytest.raises(ValueError, match="unknown defect kind"):
        photos_defects.add_defect(
            np.random.default_rng(0), np.zeros((8, 8, 1), np.float32), "dent", []
        )


def test_every_region_lies_inside_its_photo():
    # a region past the photo's edge gave crops narrower than the set's crop size, which were
    # then stretched to a square without a word (coins, generator 1.0)
    for spec in photos.SETS:
        height, width = photos.load_photo(spec.photo).shape[:2]
        for split in (spec.train, spec.test):
            for x0, y0, x1, y1 in split:
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (spec.name, split)
    coins = next(s for s in photos.SETS if s.name == "coins")
    edge = max(coins.test, key=lambda r: r[2])  # the region nearest the right edge
    box = (edge[2] - coins.crop, edge[1], edge[2], edge[1] + coins.crop)
    assert photos.render_crop(coins, box, "r0", coins.crop).shape[:2] == (coins.crop,) * 2
    bad = dataclasses.replace(coins, test=((340, 0, 420, 80),))
    with pytest.raises(ValueError, match="reaches past"):
        photos._positions(bad, bad.test)


def test_more_test_images_from_the_command_line_keep_the_first_ones(tmp_path, monkeypatch):
    """`make-photos --good N --defect M`: larger test sets (narrower AUROC intervals) whose
    first images are the default suite's, byte for byte."""
    from anomaly.cli import main

    monkeypatch.setattr(photos, "COUNTS", {"train": 2, "good": 1, "defect": 1})
    monkeypatch.setattr(photos, "SETS", [s for s in photos.SETS if s.name in FEW])
    assert main(["make-photos", str(tmp_path / "a")]) == 0
    assert main(["make-photos", str(tmp_path / "b"), "--good", "3", "--defect", "2"]) == 0
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    manifest = json.loads(b["manifest.json"])
    assert manifest["counts"] == {"train": 2, "good": 3, "defect": 2}
    assert len([k for k in b if k.startswith("page/test/good/")]) == 3
    shared = [k for k in a if k != "manifest.json"]
    assert shared and all(a[k] == b[k] for k in shared)


def test_no_crop_twice_among_a_splits_images_of_one_kind(tmp_path):
    # coins' 12 training coins hold 81 positions each: 80 crops drawn with replacement gave 4
    # byte-identical pairs (generator 1.1), and held-out copies of training images
    manifest = make_photos(tmp_path, seed=0, sets=["coins"])
    images = manifest["sets"]["coins"]["images"].values()
    drawn = [(e["split"], e["kind"], tuple(e["crop"]), e["transform"]) for e in images]
    assert len(drawn) == 80 + 25 + 7 * len(manifest["sets"]["coins"]["defect_kinds"])
    assert len(set(drawn)) == len(drawn)
    train = [tmp_path / "coins" / rel for rel, e in manifest["sets"]["coins"]["images"].items()]
    assert len({p.read_bytes() for p in train if "train" in p.parts}) == 80


def test_more_images_than_a_split_holds_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"coins: its train regions hold at most 972 distinct"):
        make_photos(tmp_path, sets=["page", "coins"], train=973)  # page first: it has room
    assert not any(tmp_path.iterdir())  # refused before any file is written
