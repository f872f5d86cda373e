"""What a deployed detector says about its decisions: `predict --onnx` gives the threshold's
guarantee and the warnings on unlike images that `predict --run` gives, from metadata checked on
load; the notebook helpers refuse a run they cannot draw with an error naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import deploy_copy, fresh_python, tiny_config
from PIL import Image

from anomaly.cli import main
from anomaly.config import Config
from anomaly.pipeline import train_run
from anomaly.runs import RunError

SIZE = 32


@pytest.fixture(scope="module")
def conformal_export(tiny_cookies, tmp_path_factory):
    """A patchknn run with a conformal threshold set on a folder of good images, exported."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.export import export_onnx

    base = tmp_path_factory.mktemp("deploy")
    run, good = base / "pk", base / "good"
    good.mkdir()
    shutil.copy(min((tiny_cookies / "test" / "good").glob("*.png")), good / "g.png")
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=SIZE, device="cpu")
    train_run(config, run, progress=False)
    flags = ["--good-images", str(good), "--rule", "conformal", "--value", "0.5"]
    assert main(["threshold", "--run", str(run), *flags]) == 0
    return run, export_onnx(run, run / "model.onnx")


def _edited(src: Path, dest: Path, key: str, value: str | None) -> Path:
    """A copy of the ONNX file `src` with metadata `key` set to `value` (None: removed)."""
    import onnx

    model = onnx.load(str(src))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in kept + ([(key, value)] if value is not None else []):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(dest))
    return dest


def _threshold_line(out: str) -> str:
    """The threshold's line up to where the overlays went: value, rule and guarantee."""
    line = next(x for x in out.splitlines() if x.startswith("threshold "))
    return line.split("; overlays in", 1)[0]


def _good_image(tiny_cookies) -> str:
    return str(min((tiny_cookies / "test" / "good").glob("*.png")))


# --- 1. the threshold's guarantee travels with the export ------------------------------------
def test_predict_onnx_says_the_guarantee_predict_run_says(conformal_export, tiny_cookies, capsys):
    run, path = conformal_export
    image = _good_image(tiny_cookies)
    assert main(["predict", "--run", str(run), image]) == 0
    eager = _threshold_line(capsys.readouterr().err)
    assert main(["predict", "--onnx", str(path), image]) == 0
    captured = capsys.readouterr()
    # the same words, rule included ("(conformal, exported)" said it differently)
    assert "(conformal): guarantee: false-reject rate <= 50%" in captured.err
    assert _threshold_line(captured.err) == eager and "no guarantee" not in captured.err
    assert len(captured.err.splitlines()) == 1  # the threshold's line, no warning


def test_an_older_export_without_the_params_says_so(conformal_export, tiny_cookies, capsys):
    _, path = conformal_export
    older = _edited(path, path.with_name("older.onnx"), "threshold_params", None)
    assert main(["predict", "--onnx", str(older), _good_image(tiny_cookies)]) == 0
    err = capsys.readouterr().err
    assert "exported before exports recorded what a threshold guarantees" in err
    assert "python -m anomaly export --run" in err


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("not json", "its metadata threshold_params is 'not json', not a JSON object"),
        ("[1]", "not a JSON object"),
        ('{"alpha": 2}', "threshold_params.alpha is 2"),
        ('{"n": -1}', "threshold_params.n is -1"),
        ('{"guarantee": "\\u001b[2J all good"}', "threshold_params.guarantee"),
        ('{"earlier_model": "no"}', "threshold_params.earlier_model is 'no'"),
        ('{"set_by": "x"}', "threshold_params.set_by"),
    ],
)
def test_edited_threshold_params_are_one_clear_error(
    conformal_export, tiny_cookies, tmp_path, capsys, value, said
):
    _, path = conformal_export
    edited = _edited(path, tmp_path / "edited.onnx", "threshold_params", value)
    assert main(["predict", "--onnx", str(edited), _good_image(tiny_cookies)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {edited}: ") and said in err and "export the run again" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "\x1b" not in err


def test_an_edited_train_mark_is_one_clear_error(conformal_export, tiny_cookies, tmp_path, capsys):
    """threshold_train (train set the threshold, on held-out or on training images) is a
    metadata key of its own since 2026-12-05: older readers pass over it; a value export never
    writes is refused as the params' are."""
    _, path = conformal_export
    edited = _edited(path, tmp_path / "edited.onnx", "threshold_train", "\x1b[2J")
    assert main(["predict", "--onnx", str(edited), _good_image(tiny_cookies)]) == 2
    err = capsys.readouterr().err
    assert "its metadata threshold_train is" in err and "\x1b" not in err


def test_an_edited_value_range_is_refused(conformal_export, tiny_cookies, tmp_path, capsys):
    """value_range was not checked: edited to 0,255 the file scored as before while a reader of
    its metadata would feed 0-255 pixels (a check of README's claims)."""
    _, path = conformal_export
    edited = _edited(path, tmp_path / "edited.onnx", "value_range", "0,255")
    assert main(["predict", "--onnx", str(edited), _good_image(tiny_cookies)]) == 2
    assert "its metadata value_range is '0,255', not '0,1'" in capsys.readouterr().err


def test_an_earlier_model_threshold_says_its_guarantee_no_longer_holds(
    conformal_export, tiny_cookies, tmp_path, capsys
):
    _, path = conformal_export
    value = json.dumps({"alpha": 0.5, "n": 1, "earlier_model": True})
    edited = _edited(path, tmp_path / "earlier.onnx", "threshold_params", value)
    assert main(["predict", "--onnx", str(edited), _good_image(tiny_cookies)]) == 0
    assert "chosen on an earlier model of this run" in capsys.readouterr().err


# --- 2. images unlike the training images are named, as by predict --run ------------------------
@pytest.fixture(scope="module")
def unlike_images(tiny_cookies, tmp_path_factory):
    """A greyscale image, a wide one and a 16-bit grey one, made from a good test image."""
    folder = tmp_path_factory.mktemp("unlike")
    rgb = Image.open(_good_image(tiny_cookies)).convert("RGB")
    rgb.convert("L").save(folder / "grey.png")
    rgb.resize((256, 32)).save(folder / "wide.png")
    deep = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    return sorted(str(p) for p in folder.glob("*.png"))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_predict_onnx_warns_of_unlike_images_as_predict_run(
    conformal_export, unlike_images, capsys
):
    run, path = conformal_export
    assert main(["predict", "--run", str(run), *unlike_images]) == 0
    eager = _warnings(capsys.readouterr().err)
    assert main(["predict", "--onnx", str(path), *unlike_images]) == 0
    onnx = _warnings(capsys.readouterr().err)
    assert onnx == eager and len(onnx) == 3
    assert any("greyscale" in w for w in onnx) and any("16-bit" in w for w in onnx)
    assert any("aspect ratio 8.00" in w for w in onnx)


def test_predict_onnx_the_function_warns_too(conformal_export, unlike_images, capsys):
    from anomaly.export import predict_onnx

    _, path = conformal_export
    scores, _ = predict_onnx(path, unlike_images)
    assert len(scores) == 3 and len(_warnings(capsys.readouterr().err)) == 3


def test_an_export_without_the_record_checks_nothing(
    conformal_export, unlike_images, tmp_path, capsys
):
    _, path = conformal_export
    older = _edited(path, tmp_path / "older.onnx", "images", None)
    assert main(["predict", "--onnx", str(older), *unlike_images]) == 0
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize(
    "value",
    [
        "{",
        '{"colour": "yes"}',
        '{"bits": [12]}',
        '{"aspect": [2, 1]}',
        '{"aspect": 1}',
        '{"side": [0, 64]}',
        '{"side": [64.5, 70]}',
        '{"side": [64]}',
    ],
)
def test_an_edited_images_record_is_one_clear_error(
    conformal_export, tiny_cookies, tmp_path, capsys, value
):
    _, path = conformal_export
    edited = _edited(path, tmp_path / "edited.onnx", "images", value)
    assert main(["predict", "--onnx", str(edited), _good_image(tiny_cookies)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {edited}: its metadata images is ")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_image_kind_imports_neither_torch_nor_the_heavy_modules():
    """predict_onnx imports it: it must stay light (Pillow, and no torch)."""
    code = (
        "import sys; import anomaly.data.image_kind, anomaly.data.image_unlike; "
        "heavy = [m for m in ('torch', 'numpy', 'anomaly.data.folder', 'anomaly.pipeline', "
        "'anomaly.detectors') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr


def test_onnx_predict_py_copied_without_the_package_predicts_with_a_note(
    conformal_export, unlike_images, tmp_path
):
    """onnx_predict.py (with onnx_checks.py) still runs where only numpy, Pillow and onnxruntime
    are: the image-kind warnings are skipped there, and a note says so once."""
    _, path = conformal_export
    deploy_copy(tmp_path, "deployed.py")
    code = (
        "import sys; sys.modules['anomaly'] = None; from deployed import predict_onnx; "
        f"s, m = predict_onnx({str(path)!r}, {unlike_images!r}); assert len(s) == 3; "
        "assert 'torch' not in sys.modules"
    )
    done = fresh_python(code, tmp_path)
    assert done.returncode == 0 and "warning:" not in done.stderr, done.stderr
    assert done.stderr.count("note: without the anomaly package") == 1


def test_onnx_predict_py_copied_without_the_package_refuses_a_tiff_stack(
    conformal_export, tiny_cookies, tmp_path
):
    """Copied without the package it cannot ask `image_kind`, yet a TIFF of several same-size
    pages is still refused (it read the first page silently), while a TIFF with a smaller
    thumbnail page is read as the package reads it."""
    _, path = conformal_export
    deploy_copy(tmp_path, "deployed.py")
    image = Image.open(_good_image(tiny_cookies)).convert("RGB")
    image.save(tmp_path / "stack.tif", save_all=True, append_images=[image, image])
    image.save(tmp_path / "thumb.tif", save_all=True, append_images=[image.resize((8, 8))])
    code = (
        "import sys; sys.modules['anomaly'] = None; from deployed import predict_onnx; "
        f"s, m = predict_onnx({str(path)!r}, [{str(tmp_path / 'thumb.tif')!r}]); "
        "assert len(s) == 1; "
        f"predict_onnx({str(path)!r}, [{str(tmp_path / 'stack.tif')!r}])"
    )
    done = fresh_python(code, tmp_path)
    assert done.returncode != 0 and "a TIFF of 3 pages, not one image" in done.stderr


# --- 3. the notebook helpers refuse a run they cannot draw -----------------------------------------
def test_reconstruction_helpers_refuse_a_run_that_does_not_reconstruct(conformal_export):
    from anomaly import notebook as nb

    run, _ = conformal_export
    said = rf"needs an ae, unet or vae run \({run} is a patchknn run"
    with pytest.raises(RunError, match=said):
        nb.reconstructions_figure({"x": run})
    with pytest.raises(RunError, match=said):
        nb.l2_vs_ssim_figure(run)
    with pytest.raises(RunError, match=said):
        nb.copy_through_table({"x": run})


def test_copy_through_refuses_test_images_with_no_defect(tiny_cookies, tmp_path):
    from anomaly import notebook as nb

    data = tmp_path / "good_only"
    shutil.copytree(tiny_cookies, data)
    for folder in (data / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(data / "ground_truth", ignore_errors=True)
    run = tmp_path / "ae"
    train_run(tiny_config(data, epochs=1), run, progress=False)
    with pytest.raises(RunError, match=rf"{run}'s test images \(.*\) hold no defective image"):
        nb.copy_through_table({"ae": run})
