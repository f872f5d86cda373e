"""Overlays and figures: shapes, colours, the shared scale, outlines, files written."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.detectors.base import Predictions
from anomaly.metrics import Threshold
from anomaly.overlays import (
    EvidenceScale,
    annotated_overlay,
    body_rows,
    colour_bar,
    enlargement,
    evidence_overlay,
    run_scale,
    save_overlays,
    strong_red_fraction,
)
from anomaly.runs import RunDir
from anomaly.viz import (
    OUTLINE,
    dataset_range,
    heatmap_overlay,
    plot_gallery,
    plot_history,
    plot_roc,
    plot_score_histogram,
    red_overlay,
    to_rgb,
)

H, W = 16, 20


def grey_image(value=0.5):
    return np.full((H, W), value, np.float32)


@pytest.mark.parametrize("shape", [(H, W), (1, H, W), (3, H, W), (H, W, 1), (H, W, 3)])
def test_overlays_accept_every_layout(shape):
    image = np.full(shape, 0.5, np.float32)
    for out in (
        red_overlay(image, np.zeros((H, W)), vmax=1.0),
        heatmap_overlay(image, np.zeros((H, W)), 0.0, 1.0),
    ):
        assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert to_rgb(np.full(shape, 255, np.uint8)).max() == 1.0


def test_red_overlay_zero_diff_is_grey_and_red_grows():
    image = np.random.default_rng(0).random((3, H, W)).astype(np.float32)
    grey = red_overlay(image, np.zeros((H, W)), vmax=1.0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    diff = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    out = red_overlay(grey_image(0.3), diff, vmax=1.0).astype(int)
    assert (np.diff(out[0, :, 0]) >= 0).all() and out[0, -1, 0] > out[0, 0, 0]
    assert out[0, -1].tolist() == [255, 0, 0]  # diff == vmax: pure red
    assert (out[..., 0] >= out[..., 1]).all()
    below = red_overlay(grey_image(0.3), np.full((H, W), 0.4), vmax=1.0, vmin=0.5)
    # at or below vmin: nothing painted, the grey stays 0.3 * 255 = 76.5, which numpy versions
    # and float rounding turn into 76 or 77: either is right
    assert (np.abs(below.astype(float) - 0.3 * 255) <= 0.5).all()


def test_red_overlay_vmax_is_shared():
    diff = np.full((H, W), 0.5, np.float32)
    a = red_overlay(grey_image(), diff, vmax=2.0)
    b = red_overlay(grey_image(), diff * 4, vmax=2.0)
    assert a[0, 0, 0] < b[0, 0, 0]  # per-image scaling would make them equal


def test_heatmap_scale_is_shared_between_images():
    a = np.zeros((H, W), np.float32)
    b = np.full((H, W), 10.0, np.float32)
    a[0, 0] = b[0, 0] = 3.0
    out_a = heatmap_overlay(grey_image(), a, vmin=0.0, vmax=10.0)
    out_b = heatmap_overlay(grey_image(), b, vmin=0.0, vmax=10.0)
    assert out_a[0, 0].tolist() == out_b[0, 0].tolist()
    assert out_a[5, 5].tolist() != out_b[5, 5].tolist()


def test_heatmap_draws_mask_outline():
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 5:12] = 1
    out = heatmap_overlay(grey_image(), np.zeros((H, W)), 0.0, 1.0, mask=mask)
    lime = (out == OUTLINE).all(-1)
    assert lime[4, 5:12].all() and lime[4:10, 5].all()  # the region's border
    assert not lime[6, 8] and not lime[0, 0]  # not its inside, not the background


def test_dataset_range_from_normal_images():
    maps = np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.full((4, 4), 9.0)])
    assert dataset_range(maps, q=(0.0, 1.0)) == (0.0, 9.0)
    assert dataset_range(maps, q=(0.0, 1.0), labels=[0, 0, 1]) == (0.0, 1.0)


def test_figures_build_with_expected_axes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    scores = rng.normal(labels, 1.0)
    fig = plot_score_histogram(scores, labels, threshold=0.5)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    assert len(plot_roc({"a": (labels, scores), "b": (labels, -scores)}).axes[0].lines) == 3
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,train_loss,val_loss\n1,0.5,0.6\n2,0.3,\n3,0.2,0.4\n")
    assert len(plot_history(csv).axes[0].lines) == 2
    rows = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}]
    assert len(plot_history(rows).axes[0].lines) == 1
    images = [rng.random((3, H, W)) for _ in range(5)]
    masks = [None, None, np.pad(np.ones((4, 4)), 6)[:H, :W], None, None]
    assert len(plot_gallery(images, titles=list("abcde"), masks=masks, ncols=3).axes) == 5
    overlays = [red_overlay(im, np.zeros((H, W)), vmax=1) for im in images]
    assert len(plot_gallery(images, overlays=overlays, ncols=2).axes) == 10
    fig.savefig(tmp_path / "hist.png")


def test_save_overlays_one_file_per_image(tmp_path):
    defects = ["good", "crack", "crack"]
    paths = []
    for i, d in enumerate(defects):
        folder = tmp_path / "test" / d
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i % 2:03d}.png"
        Image.fromarray(np.full((2 * H, 2 * W, 3), 128, np.uint8)).save(path)
        paths.append(str(path))
    maps = np.random.default_rng(0).random((3, H, W)).astype(np.float32)
    masks = np.zeros((3, H, W), np.uint8)
    masks[1:, 2:6, 2:6] = 1
    pred = Predictions(paths, [0, 1, 1], defects, maps.mean((1, 2)), maps, masks)
    written = save_overlays(pred, tmp_path / "overlays", EvidenceScale(0.2, 0.8), threshold=0.5)
    assert [p.name for p in written] == ["good_000.png", "crack_001.png", "crack_000.png"]
    for p, path in zip(written, paths):
        own = np.asarray(Image.open(path)).shape  # the image's own size, not the map's
        rgb = np.asarray(Image.open(p))
        k = enlargement(
            own[1], own[0]
        )  # small images are enlarged by a whole factor to stay legible
        assert rgb.shape[1] == own[1] * k and rgb[body_rows(own, "x")].shape[0] == own[0] * k
    same = save_overlays(pred, tmp_path / "again", EvidenceScale(0.2, 0.8), 0.5)
    assert [p.read_bytes() for p in same] == [p.read_bytes() for p in written]


# ---------------------------------------------------------------------------------------------
# Evidence overlays: one scale anchored to the run's thresholds (anomaly.overlays)
# ---------------------------------------------------------------------------------------------


def test_evidence_colours_are_anchored_to_the_pixel_threshold():
    scale = EvidenceScale(floor=1.0, pixel_threshold=3.0)  # evidence = (v - 1) / 2
    image = np.full((4, 4, 3), 128, np.uint8)
    amap = np.array([[1.0, 2.4, 2.8, 3.0]] * 4, np.float32)  # evidence 0, .7, .9, 1
    out = evidence_overlay(image, amap, scale).astype(int)
    assert out[0, 0].tolist() == [128, 128, 128]  # typical good: untouched
    assert out[0, 1].tolist() == [128, 128, 128]  # below 0.75 of the threshold: untouched
    assert out[0, 2, 0] > out[0, 2, 2] and out[0, 2, 1] > out[0, 2, 2]  # a yellow wash
    assert strong_red_fraction(out[:, :3]) == 0.0
    assert strong_red_fraction(out[:, 3:]) == 1.0  # at the threshold: strongly red
    # The same value is the same colour in every image: no per-image stretching.
    other = evidence_overlay(image, np.full((4, 4), 3.0, np.float32), scale)
    assert other[0, 0].tolist() == out[0, 3].tolist()


def test_evidence_overlay_is_at_the_image_resolution_with_the_mask_outlined():
    image = np.full((60, 90, 3), 200, np.uint8)
    amap = np.zeros((15, 15), np.float32)
    amap[5:10, 5:10] = 10.0
    mask = np.zeros((15, 15), np.uint8)
    mask[5:10, 5:10] = 1
    out = evidence_overlay(image, amap, EvidenceScale(0.0, 1.0), mask=mask)
    assert out.shape == (60, 90, 3)
    assert (out == OUTLINE).all(-1).any()  # the outline, in the one outline colour
    assert strong_red_fraction(out[25:35, 40:50]) > 0.9 and strong_red_fraction(out[:10]) == 0


def test_annotated_overlay_writes_the_verdict_and_a_colour_bar():
    image = np.full((64, 64), 0.5, np.float32)
    amap = np.zeros((64, 64), np.float32)
    scale = EvidenceScale(0.0, 1.0)
    reject = annotated_overlay(image, amap, scale, score=5.0, threshold=2.0, title="x.png")
    passed = annotated_overlay(image, amap, scale, score=1.0, threshold=2.0, title="x.png")
    rows = body_rows(image.shape, "x.png")
    assert reject.shape[1] >= 256 and rows.stop - rows.start == reject.shape[1]  # enlarged
    head_r, head_p = reject[: rows.start], passed[: rows.start]
    assert ((head_r[..., 0] > 150) & (head_r[..., 1] < 80)).any()  # REJECT in red
    assert not ((head_p[..., 0] > 150) & (head_p[..., 1] < 80)).any()  # PASS in green
    assert ((head_p[..., 1] > 100) & (head_p[..., 0] < 80)).any()
    bar = reject[rows.stop :]
    assert strong_red_fraction(bar) > 0.05  # the colour bar: its upper half is red
    assert strong_red_fraction(reject[rows]) == 0.0  # a zero map paints nothing
    assert colour_bar(300, scale).shape[1] == 300


def test_a_part_that_passes_shows_no_red():
    """The pixel threshold is the 99.9 % quantile of good images' pixels, so about 1 pixel in
    1,000 of a good part is above it: overlays painted such pixels red on parts that PASS
    (a user read it as a defect found and let through). Red now marks what rejects a part."""
    image = np.full((64, 64), 0.5, np.float32)
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = 1.5  # above the pixel threshold (1.0)
    scale = EvidenceScale(0.0, 1.0)
    rows = body_rows(image.shape)
    passed = annotated_overlay(image, amap, scale, score=1.5, threshold=2.0)[rows]
    reject = annotated_overlay(image, amap, scale, score=2.5, threshold=2.0)[rows]
    assert strong_red_fraction(passed) == 0.0 and strong_red_fraction(reject) > 0.01
    painted = np.abs(passed.astype(int) - 128).sum(-1) > 20  # still shown: in yellow
    assert painted.sum() == (np.abs(reject.astype(int) - 128).sum(-1) > 20).sum()
    assert (passed[painted][:, 1] > 100).all()  # yellow keeps its green channel; red has none
    again = evidence_overlay(image, amap, scale, passed=False)
    assert strong_red_fraction(again) > 0.01  # without a verdict: as before


def test_run_scale_uses_the_saved_pixel_threshold(tmp_path):
    RunDir(tmp_path).save_val_scores(["a.png"], [1.0], (0.5, 2.0))
    assert run_scale(tmp_path) == EvidenceScale(0.5, 2.0)
    Threshold(3.0, "explorer", {"pixel_threshold": 1.5}).save(tmp_path / "threshold.json")
    assert run_scale(tmp_path) == EvidenceScale(0.5, 1.5)


@pytest.fixture(scope="module")
def patchknn_run(tmp_path_factory):
    """A tiny patchknn run on the tiny cookie preset at 128 px, trained and scored (~15 s)."""
    from anomaly.config import Config
    from anomaly.data import make_cookies
    from anomaly.pipeline import score_run, train_run

    root = tmp_path_factory.mktemp("cookies") / "tiny128"
    make_cookies(root, preset="tiny", seed=0, size=128)
    run = tmp_path_factory.mktemp("runs") / "patchknn"
    config = Config.for_method("patchknn").replace(data=str(root), size=128, seed=3, device="cpu")
    train_run(config, run, progress=False)
    score_run(run)
    return run


def test_score_overlays_make_good_and_defective_cookies_look_different(patchknn_run):
    pred = RunDir(patchknn_run).predictions()
    red = {}
    for path, defect in zip(pred.paths, pred.defects):
        rgb = np.asarray(Image.open(patchknn_run / "overlays" / f"{defect}_{Path(path).stem}.png"))
        shape = np.asarray(Image.open(path)).shape
        assert rgb.shape[1] == shape[1] * enlargement(shape[1], shape[0])  # own size (x k if small)
        red.setdefault(defect == "good", []).append(
            strong_red_fraction(rgb[body_rows(shape, f"{defect} / {Path(path).name}")])
        )
    good, defective = np.array(red[True]), np.array(red[False])
    print(f"\nstrongly red: good {np.round(good, 4)}, defective {np.round(defective, 4)}")
    assert good.mean() < 0.02  # a good cookie looks clean
    assert defective.min() > good.max()  # every defect is redder than every good cookie
    assert defective.mean() > 3 * good.mean()


def test_evidence_colours_follow_the_scale_exactly():
    """Yellow fading in from 0.75 to 1, red from 1 on, darker to 2; computed for the red pixels
    only, bit for bit what the formula for every pixel gives (NaN and infinities included)."""
    from anomaly.overlays import RED_HIGH, RED_LOW, YELLOW, evidence_rgba

    e = np.concatenate(
        [np.linspace(-1, 3, 4001, dtype=np.float32), np.float32([np.nan, np.inf, -np.inf])]
    ).reshape(1, -1)
    x = e[..., None]
    high = np.clip(x - 1.0, 0.0, 1.0)
    want_colour = np.where(x >= 1.0, (1 - high) * RED_LOW + high * RED_HIGH, YELLOW)
    want_alpha = np.where(x >= 1.0, 0.65 + 0.2 * high, 0.4 * np.clip((x - 0.75) / 0.25, 0, 1))
    colour, alpha = evidence_rgba(e)
    np.testing.assert_array_equal(colour, want_colour)
    np.testing.assert_array_equal(alpha, want_alpha[..., 0])
    assert alpha[0, e[0] < 0.75].max() == 0 and np.all(colour[0, e[0] < 1] == YELLOW)


def test_the_colour_bar_is_drawn_once_per_width_and_scale():
    from anomaly.overlays import EvidenceScale, colour_bar

    scale = EvidenceScale(0.0, 2.0)
    bar = colour_bar(256, scale)
    assert colour_bar(256, scale) is bar and not bar.flags.writeable
    assert colour_bar(300, scale).shape[1] == 300
