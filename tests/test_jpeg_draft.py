"""`--decode draft` (the default of new runs): a large JPEG is decoded at a reduced scale
(Pillow's draft mode) before it is resized to the model's size, the same way in training,
`score`, `predict --run`, `threshold --good-images` and the standalone ONNX reader; runs trained
before it (no `decode` in config.json) keep decoding every pixel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from anomaly.cli import main
from anomaly.config import Config
from anomaly.data.folder import load_image, read_image
from anomaly.pipeline import train_run
from anomaly.runs import RunDir

SIZE = 48


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """A plain-layout set of 640 x 480 JPEGs: crops of one photo, flipped (good), and a few with
    a dark square pasted in (defect)."""
    root = tmp_path_factory.mktemp("jpeg") / "set"
    photo = skdata.chelsea()  # 300 x 451 RGB, enlarged so that draft mode has work to do
    big = np.asarray(Image.fromarray(photo).resize((1280, 852)))
    rng = np.random.default_rng(0)
    for kind, n in (("good", 12), ("dark", 3)):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            y, x = rng.integers(0, 852 - 480), rng.integers(0, 1280 - 640)
            crop = big[y : y + 480, x : x + 640].copy()
            if i % 2:
                crop = crop[:, ::-1]
            if kind == "dark":
                crop[200:260, 300:360] = 20
            Image.fromarray(np.ascontiguousarray(crop)).save(
                root / kind / f"{i:03d}.jpg", quality=90
            )
    return root


def test_draft_decodes_fewer_pixels_and_only_jpegs(jpegs, tmp_path):
    path = min((jpegs / "good").glob("*.jpg"))
    assert read_image(path).shape == (480, 640, 3)
    assert read_image(path, 2 * SIZE).shape == (120, 160, 3)  # 1/4: both sides stay >= 96
    full, draft = load_image(path, SIZE, 3), load_image(path, SIZE, 3, "draft")
    assert full.shape == draft.shape == (3, SIZE, SIZE)
    assert 0 < float((full - draft).abs().max()) < 0.05  # another decode of the same picture
    png = tmp_path / "same.png"
    Image.open(path).save(png)
    assert read_image(png, 2 * SIZE).shape == (480, 640, 3)  # other formats: every pixel


def test_new_runs_draft_and_older_ones_decode_every_pixel(tmp_path):
    assert Config.for_method("patchknn").decode == "draft"
    assert Config.for_method("unet", recipe="original").decode == "draft"
    assert Config().decode == "full"
    Config.for_method("ae").save(tmp_path / "config.json")
    older = json.loads((tmp_path / "config.json").read_text())
    del older["decode"]  # written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert Config.load(tmp_path / "config.json").decode == "full"
    with pytest.raises(ValueError, match="decode"):
        Config.for_method("ae", decode="half").validate()


def test_predict_run_and_onnx_decode_a_jpeg_alike(jpegs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.export import OnnxDetector, export_onnx, predict_onnx
    from anomaly.predict import predict_images

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(jpegs), size=SIZE, device="cpu")
    train_run(config, run, progress=False)
    assert RunDir(run).config().decode == "draft"
    files = sorted((jpegs / "dark").glob("*.jpg"))
    results, _ = predict_images(run, files, overlay_dir=tmp_path / "overlays")
    path = export_onnx(run, tmp_path / "pk.onnx")
    assert OnnxDetector(path).decode == "draft" and OnnxDetector(path).draft == 2 * SIZE
    scores, _ = predict_onnx(path, files)
    np.testing.assert_allclose([r["score"] for r in results], scores, rtol=0, atol=1e-4)
    # the overlay is drawn on the drafted decode (160 x 120), not the 640 x 480 file
    assert Image.open(results[0]["overlay"]).size[0] < 640
    # a run from before the setting (no decode in config.json) decodes every pixel, and its
    # export says so
    older = tmp_path / "older"
    config = Config.for_method("patchknn", data=str(jpegs), size=SIZE, device="cpu", decode="full")
    train_run(config, older, progress=False)
    saved = json.loads((older / "config.json").read_text())
    del saved["decode"]
    (older / "config.json").write_text(json.dumps(saved))
    results, _ = predict_images(older, files, overlays=False)
    path = export_onnx(older, tmp_path / "older.onnx")
    assert OnnxDetector(path).decode == "full"
    np.testing.assert_allclose(
        [r["score"] for r in results], predict_onnx(path, files)[0], atol=1e-4
    )
    assert main(["predict", "--run", str(older), "--no-overlays", str(files[0])]) == 0
    capsys.readouterr()


def test_both_decoders_draft_alike_jpegs_of_several_pictures_too(jpegs, tmp_path):
    """A JPEG holding a second picture (phones embed gain or depth maps) opens as MPO."""
    from anomaly.onnx_predict import preprocess

    path = min((jpegs / "good").glob("*.jpg"))
    mpo = tmp_path / "two.jpg"
    first = Image.open(path).convert("RGB")
    first.save(mpo, format="MPO", save_all=True, append_images=[first.resize((64, 48))])
    assert Image.open(mpo).format == "MPO"
    assert read_image(mpo, 2 * SIZE).shape == (120, 160, 3)
    for f in (path, mpo):
        for decode in ("full", "draft"):
            ours = load_image(f, SIZE, 3, decode).numpy()
            np.testing.assert_allclose(preprocess(f, SIZE, 3, decode), ours, atol=1e-5)
    assert np.abs(preprocess(path, SIZE, 3, "draft") - preprocess(path, SIZE, 3)).max() > 1e-3


def test_help_states_the_new_runs_default():
    from anomaly.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "default draft; runs trained before the setting: full" in " ".join(text.split())


def test_decode_added_to_an_older_runs_config_is_refused(jpegs, tmp_path):
    """An older run's model.pt holds no decode; config.json edited to "draft" would change its
    scores under its saved threshold: the edit is named, as any other."""
    import torch

    from anomaly.pipeline import load_run
    from anomaly.runs import RunError

    run = tmp_path / "md"
    config = Config.for_method("meandiff", data=str(jpegs), size=SIZE, decode="full")
    train_run(config, run, progress=False)
    for name in ("model.pt",):
        saved = torch.load(run / name, weights_only=False)
        del saved["config"]["decode"]  # as written before the setting existed
        torch.save(saved, run / name)
    older = json.loads((run / "config.json").read_text())
    del older["decode"]
    (run / "config.json").write_text(json.dumps(older))
    load_run(run)  # as it was: loads
    older["decode"] = "draft"
    (run / "config.json").write_text(json.dumps(older))
    with pytest.raises(RunError, match="decode"):
        load_run(run)


def test_an_encoder_run_decoded_otherwise_is_named(jpegs, tmp_path, capsys):
    src = tmp_path / "ae"
    config = Config.for_method("ae", data=str(jpegs), size=32, epochs=1, decode="full")
    train_run(config, src, progress=False)
    flags = ["--method", "kmeans", "--from", str(src), "--decode", "draft"]
    assert main(["train", *flags, "--out", str(tmp_path / "km")]) == 0
    assert "trained with --decode full" in capsys.readouterr().err


def test_score_draws_a_jpeg_at_the_scale_predict_draws_it(jpegs, tmp_path):
    """score's overlays/ read each JPEG again at its full 640 x 480 (camera photos: PNGs of
    several MB, each decoded twice in full), while predict drew the same file at the run's
    decoding, though README says every picture is drawn at the scale it was decoded at."""
    from anomaly.pipeline import score_run
    from anomaly.predict import predict_images

    run = tmp_path / "pk"
    train_run(
        Config.for_method("patchknn", data=str(jpegs), size=SIZE, device="cpu"), run, progress=False
    )
    score_run(run)
    file = min((jpegs / "dark").glob("*.jpg"))
    results, _ = predict_images(run, [file], overlay_dir=tmp_path / "predicted")
    scored = Image.open(run / "overlays" / f"dark_{file.stem}.png").size
    assert scored == Image.open(results[0]["overlay"]).size
    assert scored[0] < 640
