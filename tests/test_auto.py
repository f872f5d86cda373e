"""`auto`: label-free choice of a method by synthetic-defect separation, and its saved state."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import ImagesOnly, Textures

from anomaly.config import Config
from anomaly.detectors import REGISTRY, Detector, register
from anomaly.detectors.auto import (
    AutoDetector,
    TrainingImages,
    _Images,
    candidate_config,
    choose,
    format_selection,
    without_timings,
)

SIZE = 48
FAST = {"method": "patchknn", "size": SIZE, "coreset_ratio": 0.1}
GRID = [FAST, {**FAST, "score_topk": 0.05}]


def textures(n: int = 14, contrast: float = 0.4) -> Textures:
    """Smooth random colour textures: normal images only (what auto trains on)."""
    return Textures(n, size=SIZE, channels=3, contrast=contrast)


@pytest.fixture
def stubs():
    """Two registered stub methods: `stub-blind` scores every image the same (AUROC 0.5),
    `stub-mean` scores the image's deviation from the mean training image (sees pastes)."""

    @register("stub-blind")
    class Blind(Detector):
        def fit(self, train_data, val_data=None, progress=False, **kwargs):
            return self

        def predict_batch(self, images):
            return torch.zeros(len(images)), torch.zeros(len(images), *images.shape[-2:])

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    @register("stub-mean")
    class Mean(Blind):
        def fit(self, train_data, val_data=None, progress=False, **kwargs):
            self.mean = torch.stack([train_data[i]["image"] for i in range(len(train_data))]).mean(
                0
            )
            return self

        def predict_batch(self, images):
            maps = (images - self.mean).abs().mean(1)
            return maps.flatten(1).amax(1), maps

    yield
    del REGISTRY["stub-blind"], REGISTRY["stub-mean"]


def _config(seed: int = 0) -> Config:
    return Config(method="auto", size=SIZE, channels=3, seed=seed, batch_size=8)


def test_same_seed_same_choice_and_scores():
    first = AutoDetector(_config(), candidates=GRID).fit(textures())
    rows = first.selection["candidates"]
    assert rows[1]["fit_shared_with"] == rows[0]["name"]  # differs only in the image score
    assert rows[0]["aupro"] == rows[1]["aupro"]
    second = AutoDetector(_config(), candidates=GRID).fit(textures())
    strip = [
        {k: v for k, v in r.items() if not k.endswith("_s")} for r in first.selection["candidates"]
    ]
    assert strip == [
        {k: v for k, v in r.items() if not k.endswith("_s")} for r in second.selection["candidates"]
    ]
    assert first.selection["chosen"] == second.selection["chosen"]
    other = AutoDetector(_config(seed=1), candidates=GRID).fit(textures())
    assert other.selection["candidates"][0]["image_auroc"] is not None


def test_chooses_the_best_separation_over_a_blind_candidate(stubs):
    grid = [
        {"method": "stub-blind"},
        {"method": "stub-mean", "size": SIZE},
        {"method": "no-such-method"},
    ]
    data = textures(contrast=0.02)
    auto = AutoDetector(_config(), candidates=grid).fit(data)
    rows = auto.selection["candidates"]
    assert rows[0]["image_auroc"] == 0.5
    assert rows[1]["image_auroc"] > 0.8
    assert rows[2]["error"] and "not available" in rows[2]["error"]
    assert auto.selection["chosen"] == "stub-mean size=48" and auto.chosen == grid[1]
    assert isinstance(auto.inner, REGISTRY["stub-mean"])
    assert torch.allclose(auto.inner.mean, data.images.mean(0))  # final fit: all images
    text = format_selection(auto.selection)
    assert "auto chose stub-mean size=48" in text and "skipped" in text
    assert text.count("ms/image") == 2  # each scored candidate's predict time; not the skipped


def test_choose_breaks_image_auroc_ties_by_aupro_then_grid_order():
    rows = [
        {"name": "a", "image_auroc": 0.99, "aupro": 0.5},
        {"name": "b", "image_auroc": 0.996, "aupro": 0.4},
        {"name": "c", "image_auroc": 0.9, "aupro": 0.9},
        {"name": "d", "image_auroc": None, "aupro": None, "error": "broken"},
    ]
    assert choose(rows) == 1  # a is more than the tie margin below b
    assert choose(rows, tie=0.01) == 0  # a and b tied: a localises better
    rows[1]["aupro"] = 0.5001
    assert choose(rows, tie=0.01) == 1  # same AUPRO (3 decimals): the higher image AUROC
    rows[1]["image_auroc"] = 0.99
    assert choose(rows, tie=0.01) == 0  # a full tie goes to the earlier candidate
    with pytest.raises(RuntimeError, match="no candidate"):
        choose([rows[3]])


def test_selection_lists_every_candidate_and_is_json(stubs):
    grid = [FAST, {"method": "stub-blind"}, {"method": "patchknn", "backbone": "no-such-net"}]
    auto = AutoDetector(_config(), candidates=grid).fit(textures())
    sel = json.loads(json.dumps(auto.selection))
    assert [r["settings"] for r in sel["candidates"]] == grid
    assert sel["candidates"][2]["error"].startswith("ValueError")
    assert sel["chosen_settings"] == FAST
    assert sel["held_out_normals"] == 4 and sel["trial_images"] == 10
    # 2 pasted and 3 altered per held-out image, less any that stayed invisible
    assert 8 < sel["synthetic_defects"] <= 20
    for row in sel["candidates"][:2]:
        assert 0 <= row["image_auroc"] <= 1 and 0 <= row["aupro"] <= 1 and row["fit_s"] >= 0


def test_state_round_trip_gives_identical_predictions():
    data = textures()
    auto = AutoDetector(_config(), candidates=GRID).fit(data)
    buffer = io.BytesIO()
    torch.save(auto.state_dict(), buffer)
    buffer.seek(0)
    fresh = AutoDetector(_config())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.chosen == auto.chosen  # the record without its times (selection.json has them)
    assert fresh.selection == without_timings(auto.selection) != auto.selection
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    s1, m1 = auto.predict_batch(images)
    s2, m2 = fresh.predict_batch(images)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert m1.shape == (3, SIZE, SIZE)


def test_training_labels_and_masks_are_never_read():
    auto = AutoDetector(_config(), candidates=GRID[:1]).fit(ImagesOnly(textures()))
    assert auto.selection["candidates"][0]["error"] is None


def test_candidates_predict_at_their_own_size_and_inherit_the_run():
    run = _config(seed=3).replace(data="/some/data", channels=1)
    cfg = candidate_config(run, {"method": "patchknn", "size": 32})
    assert (cfg.method, cfg.size, cfg.channels, cfg.seed, cfg.data) == (
        "patchknn",
        32,
        1,
        3,
        "/some/data",
    )
    auto = AutoDetector(_config(), candidates=[{**FAST, "size": 32}]).fit(textures())
    scores, maps = auto.predict_batch(torch.rand(2, 3, SIZE, SIZE))
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="at least 6 training images"):
        AutoDetector(_config(), candidates=GRID).fit(textures(n=5))
    with pytest.raises(ValueError, match="method other than auto"):
        AutoDetector(_config(), candidates=[{"method": "auto"}])
    with pytest.raises(RuntimeError, match="before predicting"):
        AutoDetector(_config()).predict_batch(torch.rand(1, 3, SIZE, SIZE))


def test_pipeline_run_keeps_the_selection_and_reloads(tiny_cookies, tmp_path, monkeypatch):
    from anomaly.detectors import auto
    from anomaly.pipeline import load_run, score_run, train_run

    monkeypatch.setattr(auto, "CANDIDATES", GRID)
    config = Config.for_method("auto", data=str(tiny_cookies), size=SIZE, batch_size=8)
    trained = train_run(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert saved == json.loads(json.dumps(trained.selection))
    assert [r["settings"] for r in saved["candidates"]] == GRID
    loaded = load_run(tmp_path / "run", device="cpu")  # weights_only=True inside
    assert loaded.chosen == trained.chosen
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.predict_batch(images)[0], trained.predict_batch(images)[0])
    pred, metrics = score_run(tmp_path / "run", overlays=False)
    from sklearn.metrics import roc_auc_score

    assert pred.maps.shape[-1] == SIZE
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(pred.labels, pred.scores))


def test_held_out_defects_include_quiet_alterations():
    data = textures()
    images = AutoDetector(_config())._load(data)  # TrainingImages: read on demand
    pasted_only = AutoDetector(_config(), altered_per_image=0).split(images)
    both = AutoDetector(_config(), synthetic_per_image=2, altered_per_image=3).split(images)
    n_out = len(both[1])
    assert len(pasted_only[2]) <= 2 * n_out < len(both[2]) <= 5 * n_out
    # the first defects are the pasted ones, drawn the same way in both
    assert torch.equal(both[2][: len(pasted_only[2])], pasted_only[2])
    altered, masks = both[2][len(pasted_only[2]) :], both[3][len(pasted_only[2]) :]
    hosts = both[1].repeat(3, 1, 1, 1)
    for k in range(len(altered)):  # each altered one differs from a held-out image in its region
        diff = (altered[k] - hosts).abs().amax(1)
        host = int(diff.flatten(1).sum(1).argmin())
        assert diff[host][masks[k] > 0].mean() > 0.01


def test_training_images_read_on_demand_match_the_stacked_ones():
    """auto reads the training images from the data set when it needs them (no second copy of
    the training set); what a candidate is fitted on is the same as from a stacked batch."""
    data = textures(n=6)
    lazy = TrainingImages(data)
    stacked = torch.stack([data[i]["image"] for i in range(len(data))]).float()
    assert len(lazy) == len(data)
    assert torch.equal(lazy[torch.tensor([4, 1])], stacked[[4, 1]])
    for size in (SIZE, 32):  # the run's size and a candidate's own
        a, b = _Images(lazy, size), _Images(stacked, size)
        assert len(a) == len(b) == len(data)
        for i in range(len(data)):
            assert torch.equal(a[i]["image"], b[i]["image"])
            assert a[i]["image"].shape[-1] == size


def test_every_training_image_is_read_before_the_trials(monkeypatch):
    """auto reads the training images again when it needs them; a file that cannot be read
    must still stop the run at once, naming it, not after minutes of trial fits."""
    from anomaly.data.folder import DataError

    events = []

    class Logged(torch.utils.data.Dataset):
        def __init__(self, base, bad=None):
            self.base, self.bad = base, bad

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            events.append(i)
            if i == self.bad:
                raise DataError("train/good/cut.png: cannot read this image")
            return self.base[i]

    def trial(self, *args, **kwargs):
        events.append("trial")
        raise RuntimeError("stop here")

    monkeypatch.setattr(AutoDetector, "_trial", trial)
    data = textures()
    with pytest.raises(RuntimeError, match="stop here"):  # trial_images=2: most are unused
        AutoDetector(_config(), trial_images=2).fit(Logged(data))
    assert set(events[: events.index("trial")]) == set(range(len(data)))
    unused = set(range(len(data))) - set(events[len(data) : events.index("trial")])
    events.clear()
    with pytest.raises(DataError, match="cut.png"):  # one the split and the trials skip
        AutoDetector(_config(), trial_images=2).fit(Logged(data, bad=min(unused)))
    assert "trial" not in events


def test_each_candidate_row_says_the_size_its_images_were_resized_to(stubs):
    """selection.json named a candidate's size only when it differed from its method's
    default: a reader could not tell what size flow or the default patchknn saw."""
    grid = [{"method": "stub-blind"}, {"method": "stub-mean", "size": SIZE}]
    auto = AutoDetector(_config(), candidates=grid).fit(textures())
    rows = auto.selection["candidates"]
    assert rows[1]["size"] == SIZE and isinstance(rows[0]["size"], int)
    assert f"{SIZE:4d} px  stub-mean size={SIZE}" in format_selection(auto.selection)


def test_resume_after_a_stop_before_selection_json_writes_it(tiny_cookies, tmp_path, monkeypatch):
    """Stopped after model.pt, before selection.json (an interrupt audit): `train --resume`
    finished the run and printed "all candidates: RUN/selection.json", a file it never wrote."""
    from anomaly.detectors import auto
    from anomaly.pipeline import train_run

    monkeypatch.setattr(auto, "CANDIDATES", GRID)
    config = Config.for_method("auto", data=str(tiny_cookies), size=SIZE, batch_size=8)
    run = tmp_path / "run"
    train_run(config, run, progress=False)
    saved = json.loads((run / "selection.json").read_text())
    for name in ("selection.json", "val_scores.json", "threshold.json"):
        (run / name).unlink()
    train_run(config, run, progress=False, resume=True)
    again = json.loads((run / "selection.json").read_text())  # as model.pt holds it: no times
    assert again == without_timings(saved) and again["chosen"] == saved["chosen"]
