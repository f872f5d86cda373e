"""ONNX export of patchknn runs: the exported file scores as the eager detector does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly.config import Config
from anomaly.data.folder import load_image
from anomaly.export import ExportError, preprocess

ort = pytest.importorskip(
    "onnxruntime",
    reason="onnxruntime is not installed: pip install 'anomaly[export]' "
    "(or onnx onnxruntime) to test the ONNX export",
)
pytest.importorskip("onnx", reason="onnx is not installed: pip install 'anomaly[export]'")

from anomaly.export import OnnxDetector, export_onnx, predict_onnx
from anomaly.pipeline import load_run, train_run

SIZE = 48  # the tiny cookies are 64 px: the export's preprocessing has to shrink them


@pytest.fixture(scope="module")
def exported(tiny_cookies, tmp_path_factory):
    """A float32 run and its export: from the image files, within 1e-4 of the run."""
    run = tmp_path_factory.mktemp("export") / "patchknn"
    config = Config.for_method(
        "patchknn", data=str(tiny_cookies), size=SIZE, device="cpu", search_precision="float32"
    )
    train_run(config, run, progress=False)
    return run, export_onnx(run, run / "model.onnx")


@pytest.fixture(scope="module")
def int8_exported(tiny_cookies, tmp_path_factory):
    """A run that searches in 8 bits (`--search-precision int8`) and its export."""
    run = tmp_path_factory.mktemp("export") / "int8"
    config = Config.for_method(
        "patchknn",
        data=str(tiny_cookies),
        size=SIZE,
        device="cpu",
        runtime="onnxruntime",
        search_precision="int8",
    )
    train_run(config, run, progress=False)
    return run, export_onnx(run, run / "model.onnx")


def _test_images(root) -> list:
    return sorted((root / "test").glob("*/*.png"))


def test_onnx_scores_and_maps_equal_the_eager_detector(exported, tiny_cookies):
    run, path = exported
    files = _test_images(tiny_cookies)
    detector = load_run(run, device="cpu")
    images = torch.stack(
        [load_image(f, size=SIZE, channels=detector.config.channels) for f in files]
    )
    ref_scores, ref_maps = (t.numpy() for t in detector.predict_batch(images))
    scores, maps = predict_onnx(path, files)
    assert maps.shape == ref_maps.shape == (len(files), SIZE, SIZE)
    scale = max(1.0, float(np.abs(ref_maps).max()))
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(maps, ref_maps, rtol=0, atol=1e-4 * scale)
    assert np.ptp(scores) > 1e-3 * scale  # the images do not all score alike


def test_parity_holds_for_padding_border_topk_and_grey(tiny_cookies, tmp_path):
    """The export traces whatever predict_batch does: mirrored feature padding, an image score
    without the border, a top-k score, grey images, and other stages."""
    config = Config.for_method(
        "patchknn",
        data=str(tiny_cookies),
        size=40,
        device="cpu",
        channels=1,
        feature_pad=8,
        score_border=4,
        score_topk=0.05,
        backbone="efficientnet_lite0",
        layers="blocks.2, blocks.4",
        smooth_sigma=1.0,
        neighbors=2,
    )
    train_run(config, tmp_path / "run", progress=False)
    path = export_onnx(tmp_path / "run", tmp_path / "other.onnx")
    files = _test_images(tiny_cookies)
    detector = load_run(tmp_path / "run", device="cpu")
    images = torch.stack([load_image(f, size=40, channels=1) for f in files])
    ref_scores, ref_maps = (t.numpy() for t in detector.predict_batch(images))
    scores, maps = predict_onnx(path, files)
    scale = max(1.0, float(np.abs(ref_maps).max()))
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(maps, ref_maps, rtol=0, atol=1e-4 * scale)


def test_an_int8_file_of_eight_bit_weights_is_named(int8_exported, exported, tmp_path):
    """Files exported before the bank's weights had seven bits saturate on a CPU without VNNI:
    such a file (an int8 search, no int8_weight_max) is named with the fix; today's are not,
    nor are float searches."""
    import warnings

    import onnx

    _, path = int8_exported
    assert OnnxDetector(path).meta["int8_weight_max"] == "63"
    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "int8_weight_max"]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.warns(UserWarning, match=r"old.onnx searches in 8 bits .*VNNI.*Export the run"):
        OnnxDetector(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxDetector(path)
        OnnxDetector(exported[1])


def test_an_int8_run_exports_its_8bit_search(int8_exported, tiny_cookies):
    """The file searches as the run does: in 8 bits (onnxruntime's MatMulIntegerToFloat), the
    patches beyond the bank's range exactly. The eager int8 detector's scores and maps, for
    the test image files (read by the package's loader, and by the file's preprocessing) with
    none or a few such patches, and for images with more (a small magenta square)."""
    import onnx

    from anomaly.detectors.knn import Int8Search

    run, path = int8_exported
    model = onnx.load(str(path))
    assert "MatMulIntegerToFloat" in {node.op_type for node in model.graph.node}
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in model.opset_import]
    detector = load_run(run, device="cpu")
    assert detector.int8
    files = _test_images(tiny_cookies)
    images = torch.stack([load_image(f, size=SIZE, channels=3) for f in files])
    marked = images.clone()
    marked[:, :, 20:22, 20:22] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]
    limit = Int8Search(detector.bank, detector.bank_sq).limit
    far = {}
    for name, batch, given in (("test", images, files), ("marked", marked, None)):
        patches = detector.embed(batch).flatten(1, 2)
        far[name] = (patches.abs().amax(2) > limit).sum(1)
        ref_scores, ref_maps = (t.numpy() for t in detector.predict_batch(batch))
        scores, maps = predict_onnx(path, given or list(batch.numpy()))
        scale = max(1.0, float(np.abs(ref_maps).max()))
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(maps, ref_maps, rtol=0, atol=1e-4 * scale)
    grid = patches.shape[1]
    assert (far["test"] == 0).any() and (far["test"] > 0).any()
    assert (far["marked"] > 0).all() and (far["marked"] < grid / 2).all()


def test_metadata_lets_a_user_reproduce_the_input(exported, tiny_cookies):
    run, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    config = json.loads((run / "config.json").read_text())
    assert meta["format"] == "anomaly-onnx/1" and meta["method"] == "patchknn"
    assert int(meta["size"]) == SIZE and int(meta["channels"]) == config["channels"]
    assert "BILINEAR" in meta["preprocessing"] and "65535" in meta["preprocessing"]
    threshold = json.loads((run / "threshold.json").read_text())["value"]
    assert float(meta["threshold"]) == pytest.approx(threshold)
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.shape == [1, config["channels"], SIZE, SIZE]
    # onnxruntime alone, fed by the documented preprocessing, gives predict_onnx's answer
    file = _test_images(tiny_cookies)[-1]
    x = preprocess(file, SIZE, config["channels"])[None]
    score, amap = session.run(None, {"images": x})
    scores, maps = predict_onnx(path, [file])
    np.testing.assert_array_equal(score.reshape(-1), scores)
    np.testing.assert_array_equal(amap, maps)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16", "P"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(37, 53), (90, 70), (300, 260)])  # enlarged and shrunk
def test_preprocess_matches_the_package_loader(tmp_path, mode, channels, shape):
    """Bit for bit: the loader resizes as the file's contract says (torch's antialiased resize
    was ~1e-5 apart, which an int8 run's rounding magnified to 4.6e-4 of a score)."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rgba[..., :3]).convert("P")
    else:
        image = Image.fromarray(rgba).convert(mode)
    file = tmp_path / f"x.{'tif' if mode == 'I;16' else 'png'}"
    image.save(file)
    ours = preprocess(file, 32, channels)
    theirs = load_image(file, size=32, channels=channels).numpy()
    assert ours.shape == theirs.shape == (channels, 32, 32)
    np.testing.assert_array_equal(ours, theirs)


def test_bad_inputs_name_the_file_and_the_fix(exported, tmp_path, tiny_cookies):
    run, path = exported
    with pytest.raises(ExportError, match="no such ONNX file"):
        OnnxDetector(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="junk.onnx is not a readable ONNX model"):
        OnnxDetector(junk)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    with pytest.raises(ExportError, match="broken.png: cannot read this image"):
        predict_onnx(path, [broken])
    with pytest.raises(ExportError, match=r"takes images of shape \(3, 48, 48\)"):
        predict_onnx(path, [np.zeros((3, 64, 64), np.float32)])
    with pytest.raises(ExportError, match="a folder"):
        export_onnx(run, tmp_path)


def test_arrays_that_are_not_0_1_floats_are_refused_with_the_fix(exported, tiny_cookies):
    """A deployment walkthrough (session 30): an array of 0-255 pixels (uint8, or floats) was
    scored without a word, about ten times too high; so were normalised ones. Each is refused,
    saying what to pass; a preprocessed array scores as its file does."""
    _, path = exported
    file = min((tiny_cookies / "test" / "good").glob("*.png"))
    x = preprocess(file, SIZE, 3)
    assert abs(predict_onnx(path, [x])[0][0] - predict_onnx(path, [file])[0][0]) < 1e-6
    said = {
        "uint8": r"takes pixel values as floats in \[0, 1\], not uint8: divide 8-bit values by 255",
        "0-255": r"these run from \d.* to \d.*: divide 0-255 values by 255",
        "nan": "NaN or infinite pixel values",
        "last": r"got \(48, 48, 3\); channels last: use a.transpose\(2, 0, 1\)",
    }
    bad = {
        "uint8": (x * 255).astype(np.uint8),
        "0-255": x * 255,
        "nan": np.where(x > 0.5, np.nan, x),
        "last": x.transpose(1, 2, 0),
    }
    for kind, array in bad.items():
        with pytest.raises(ExportError, match=said[kind]):
            predict_onnx(path, [array])


def test_a_folder_given_to_predict_onnx_is_its_image_files(exported, tiny_cookies, tmp_path):
    """A folder in the list was read as one image ("a folder with no images in it", though it
    had some); now it stands for its image files, sorted, hidden ones and others left out."""
    from anomaly.data.files import IMAGE_EXTENSIONS
    from anomaly.onnx_checks import IMAGE_SUFFIXES
    from anomaly.onnx_predict import predict_each

    assert IMAGE_EXTENSIONS == IMAGE_SUFFIXES  # the package reads what the deployed file does
    _, path = exported
    files = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    folder = tmp_path / "to check"
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "._hidden.png").write_bytes(b"a resource fork")
    together, _ = predict_onnx(path, folder)
    apart, _ = predict_onnx(path, files)
    np.testing.assert_allclose(together, apart, atol=1e-6)
    assert [e[0].name for e in predict_each(path, [folder])] == [f.name for f in files]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="empty is a folder with no images in it"):
        predict_onnx(path, [tmp_path / "empty"])


def test_only_patchknn_runs_export(tiny_cookies, tmp_path):
    (tmp_path / "ae").mkdir()
    config = Config.for_method("ae", data=str(tiny_cookies), size=32, epochs=1, device="cpu")
    config.save(tmp_path / "ae" / "config.json")
    with pytest.raises(
        ExportError, match=r"only patchknn runs .* export to ONNX, this run is 'ae'"
    ):
        export_onnx(tmp_path / "ae", tmp_path / "ae.onnx")


def _auto_run(tiny_cookies, tmp_path, monkeypatch, grid: list[dict]):
    from anomaly.detectors import auto

    monkeypatch.setattr(auto, "CANDIDATES", grid)
    config = Config.for_method("auto", data=str(tiny_cookies), size=SIZE, device="cpu")
    train_run(config, tmp_path / "auto", progress=False)
    return tmp_path / "auto"


def test_an_auto_run_exports_its_choice(tiny_cookies, tmp_path, monkeypatch):
    knn = {"method": "patchknn", "size": SIZE, "coreset_ratio": 0.1}
    run = _auto_run(tiny_cookies, tmp_path, monkeypatch, [knn, {"method": "meandiff"}])
    detector = load_run(run, device="cpu")
    assert detector.chosen == knn
    path = export_onnx(run, tmp_path / "auto.onnx")
    files = _test_images(tiny_cookies)
    images = torch.stack([load_image(f, size=SIZE, channels=3) for f in files])
    ref_scores, ref_maps = (t.numpy() for t in detector.predict_batch(images))
    scores, maps = predict_onnx(path, files)
    scale = max(1.0, float(np.abs(ref_maps).max()))
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(maps, ref_maps, rtol=0, atol=1e-4 * scale)
    assert OnnxDetector(path).meta["method"] == "patchknn"


def test_an_auto_run_that_chose_another_method_says_so(tiny_cookies, tmp_path, monkeypatch):
    run = _auto_run(tiny_cookies, tmp_path, monkeypatch, [{"method": "meandiff"}])
    with pytest.raises(ExportError, match="chose 'meandiff', and only patchknn exports"):
        export_onnx(run, tmp_path / "auto.onnx")


def test_an_auto_choice_at_another_size_warns(tiny_cookies, tmp_path, monkeypatch):
    knn = {"method": "patchknn", "size": 32, "coreset_ratio": 0.1}
    run = _auto_run(tiny_cookies, tmp_path, monkeypatch, [knn])
    with pytest.warns(UserWarning, match="works at 32 px and the run at 48 px"):
        path = export_onnx(run, tmp_path / "auto.onnx")
    assert OnnxDetector(path).size == 32


def test_cli_export_then_predict_onnx_agrees_with_predict_run(
    exported, tiny_cookies, tmp_path, capsys
):
    from anomaly.cli import main

    run, _ = exported
    path = tmp_path / "cli.onnx"
    assert main(["export", "--run", str(run), "--out", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    files = [str(f) for f in _test_images(tiny_cookies)[:3]]
    assert main(["predict", "--onnx", str(path), *files]) == 0
    onnx_lines = capsys.readouterr().out.splitlines()
    assert main(["predict", "--run", str(run), *files]) == 0
    run_lines = capsys.readouterr().out.splitlines()
    onnx_rows = [line.split("\t") for line in onnx_lines[:3]]
    run_rows = [line.split("\t") for line in run_lines[:3]]
    assert [r[0] for r in onnx_rows] == files and [r[2] for r in onnx_rows] == [
        r[2] for r in run_rows
    ]
    np.testing.assert_allclose(
        [float(r[1]) for r in onnx_rows], [float(r[1]) for r in run_rows], rtol=1e-4
    )
    assert (tmp_path / "cli_predict").is_dir() and len(
        list((tmp_path / "cli_predict").iterdir())
    ) == 3
    assert main(["predict", "--onnx", str(tmp_path / "nope.onnx"), *files]) == 2
    assert "nope.onnx: no such ONNX file" in capsys.readouterr().err


@pytest.mark.parametrize("export", ["exported", "int8_exported"])
def test_predict_onnx_never_imports_torch(export, tiny_cookies, request):
    _, path = request.getfixturevalue(export)
    file = _test_images(tiny_cookies)[0]
    code = (
        "import sys; from anomaly.export import predict_onnx; "
        f"s, m = predict_onnx({str(path)!r}, [{str(file)!r}]); "
        "assert m.shape == (1, 48, 48), m.shape; "
        "assert 'torch' not in sys.modules, 'predict_onnx imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_replacing_another_models_export_is_said(exported, tiny_cookies, tmp_path):
    import warnings

    run, _ = exported
    other = tmp_path / "other"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=SIZE, device="cpu", seed=1)
    train_run(config, other, progress=False)
    out = tmp_path / "shared.onnx"
    export_onnx(run, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same run again: nothing to say
        export_onnx(run, out)
    with pytest.warns(UserWarning, match="held an export of another model"):
        export_onnx(other, out)


def test_float_images_out_of_range_are_said_as_the_package_says(tmp_path):
    from anomaly.data import DataError

    grey = np.linspace(0.0, 4.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    partly = tmp_path / "partly.tif"
    Image.fromarray(grey).save(partly)
    with pytest.warns(UserWarning, match="75.0% of its values lie outside 0-1"):
        ours = preprocess(partly, 16, 1)
    with pytest.warns(UserWarning, match="75.0% of its values lie outside 0-1"):
        theirs = load_image(partly, size=16, channels=1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    grey[:4] = np.nan
    nan = tmp_path / "nan.tif"
    Image.fromarray(grey).save(nan)
    with pytest.raises(ExportError, match=r"nan.tif: 128 of its 1024 pixel values are NaN"):
        preprocess(nan, 16, 1)
    with pytest.raises(DataError, match=r"nan.tif: 128 of its 1024 pixel values are NaN"):
        load_image(nan, size=16, channels=1)


def test_an_auto_choice_that_learned_enlarged_images_is_not_exported(
    tiny_cookies, tmp_path, monkeypatch
):
    knn = {"method": "patchknn", "size": 64, "coreset_ratio": 0.1}
    run = _auto_run(tiny_cookies, tmp_path, monkeypatch, [knn])  # the run at 48 px
    with pytest.raises(ExportError, match="works at 64 px, but the run gave it images of 48 px"):
        export_onnx(run, tmp_path / "auto.onnx")
    assert not (tmp_path / "auto.onnx").exists()


def test_predict_onnx_takes_out_and_no_overlays(exported, tiny_cookies, tmp_path, capsys):
    from anomaly.cli import main

    _, path = exported
    image = str(_test_images(tiny_cookies)[0])
    mine = tmp_path / "mine"
    assert main(["predict", "--onnx", str(path), image, "--out", str(mine)]) == 0
    row = capsys.readouterr().out.rstrip("\n").split("\t")
    assert row[3] == str(mine / "000_overlay.png") and (mine / "000_overlay.png").is_file()
    assert main(["predict", "--onnx", str(path), image, "--no-overlays"]) == 0
    assert capsys.readouterr().out.rstrip("\n").split("\t")[3] == "-"


def test_each_large_constant_is_stored_once(exported):
    """The tracer wrote the float32 search's bank weights once per block of queries (8 copies,
    4.5 of a cookie export's 6.5 MB): identical constants are kept once (`_share_constants`)."""
    import onnx

    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    tensors = [
        n.attribute[0].t.SerializeToString()
        for n in model.graph.node
        if n.op_type == "Constant" and len(n.attribute[0].t.raw_data) >= 1024
    ]
    assert tensors and len(set(tensors)) == len(tensors)
