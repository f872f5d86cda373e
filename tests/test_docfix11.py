"""README, the CLI's help and the notebooks' words say what the code does: the train-size curve's
`unet+kmeans` (not the original recipe), its commands and --seeds-up-to, the defaults that help
texts name, `--readme` without `--readme-block`, and the run folder's files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from anomaly.cli import EMPTY_DEFAULT, build_parser, main
from anomaly.config import Config
from anomaly.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def help_of(*command: str) -> str:
    """The help text of a subcommand, in one line (argparse wraps it)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[command[0]]
    return " ".join(parser.format_help().split())


def test_help_names_the_defaults():
    cookies = help_of("make-cookies")
    assert "(default toy)" in cookies and "(default 0)" in cookies and "(default 256)" in cookies
    assert "real photographs of several kinds" in help_of("make-photos")
    assert "(default 8866)" in help_of("explore")
    assert "--no-overlays write no overlays/" in help_of("score")
    quantile = Config().threshold_quantile
    assert f"--threshold-quantile, {quantile} unless set in train" in help_of("threshold")
    predict = help_of("predict")
    assert "RUN/predict/" in predict and "<stem>_predict/" in predict


def test_train_help_says_what_an_empty_default_means():
    text = help_of("train")
    assert "(default )" not in text
    for words in EMPTY_DEFAULT.values():
        assert " ".join(words.split()) in text


def test_train_help_gives_each_methods_default_the_default_method_first():
    """--size said "default 128" first, which no default run uses (patchknn, the default
    --method, trains at 224), and --coreset-ratio 0.01, a value only patchknn reads and never
    at that value."""
    text = help_of("train")
    size = Config.for_method("patchknn").size
    assert (
        f"--size SIZE images are resized to size x size pixels (default by --method: "
        f"patchknn {size};" in text
    )
    assert f"auto {Config.for_method('auto').size}" in text
    assert "kmeans: its --from run's" in text.split("--size SIZE images")[1].split("--channels")[0]
    assert f"(default {Config.for_method('patchknn').coreset_ratio})" in text
    assert "(default 0.01)" not in text
    epochs = text.split("--epochs EPOCHS training")[1].split("--batch-size")[0]
    assert f"ae {Config.for_method('ae').epochs}" in epochs
    assert "patchknn does not read it" in epochs


def test_the_empty_layers_are_the_detectors_own():
    from anomaly.backbones import DEFAULT_LAYERS
    from anomaly.detectors.patchknn import PatchKNN

    words = EMPTY_DEFAULT["layers"]
    patchknn, flow = words.split("; flow ")
    for backbone, layers in PatchKNN.LAYERS.items():
        assert f"{','.join(layers)} on {backbone}" in patchknn
    for backbone in ("mobilenet_v2", "efficientnet_lite0"):  # flow: the backbone's own stages
        assert f"{','.join(DEFAULT_LAYERS[backbone])} on {backbone}" in flow


def test_benchmark_help_describes_the_curve_as_it_runs():
    text = help_of("benchmark")
    assert "unet+kmeans is the original recipe" not in text
    assert "the original recipe is not offered here" in text
    assert "--seeds-up-to N --curve: sizes up to N get --seeds subsets" in text
    assert "(default 8;" in text
    assert "1/(n+1)" in text  # the fallback of --alpha
    for flag in ("--smoke", "--sizes", "--seeds", "--alpha"):
        action = next(a for a in _benchmark_actions() if flag in a.option_strings)
        assert action.help, flag
    assert "cookies, photos" in text  # README's blocks


def _benchmark_actions():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["benchmark"]._actions


def test_readme_without_its_block_stops_before_anything_runs(tiny_cookies, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark:cookies -->\nold\n<!-- /benchmark:cookies -->\n")
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(tiny_cookies), "--out", str(out), "--readme", str(readme)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert f"--readme {readme} needs --readme-block BLOCK" in err
    assert f"({readme} has: cookies)" in err
    assert not out.exists()


def test_the_curves_unet_kmeans_is_the_projects_unet_and_patch_kmeans(tiny_cookies):
    from anomaly.benchmark_curves import _fit
    from anomaly.data import AnomalyDataset

    config = Config.for_method("unet", data=str(tiny_cookies), size=64, epochs=1, device="cpu")
    assert (config.recipe, config.width) == ("project", 16)
    data = AnomalyDataset(tiny_cookies, "train", size=64, channels=config.channels)
    detector = _fit("unet+kmeans", config, data.subset(list(range(6))), data.subset([6, 7]))
    assert (detector.kind, detector.k) == ("patch", 2)


def test_readme_shows_the_curve_commands_and_a_column_per_size():
    from anomaly.notebook_benchmark import CURVE_COMMANDS

    for command in CURVE_COMMANDS:
        assert f"    {command}\n" in README
    section = README.split("## How many good images do I need?")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert all(len(r.strip("|").split("|")) == len(header) for r in rows)
    sizes = [int(s) for s in re.findall(r"--sizes ((?:\d+ )+)", CURVE_COMMANDS[1])[0].split()]
    assert all(str(n) in header for n in sizes)
    assert "three random subsets for n <= 64)" not in section


def test_readme_names_every_run_folder_file():
    names = {
        value
        for key, value in vars(RunDir).items()
        if key.isupper() and isinstance(value, str) and value != RunDir.LOCK
    }
    paragraph = README.split("A run folder (`runs/<name>/`")[1].split("\n\n")[0]
    missing = sorted(n for n in names if f"`{n}" not in paragraph and n != RunDir.REFUSED)
    assert not missing
    assert RunDir.REFUSED in README
    assert "`model.onnx`" in paragraph and "`model_predict/`" in paragraph


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")))
def test_the_stored_notebook_matches_its_definition(name):
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "scripts/build_notebooks.py"
    )
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    stored = nbformat.read(ROOT / f"notebooks/{name}.ipynb", 4)
    assert [c.source for c in stored.cells] == build.NOTEBOOKS[name]
