"""The benchmark's table and detectability curve (the full run is `make benchmark`)."""

import json

import numpy as np
import pytest

from anomaly.benchmark import detectability, format_table
from anomaly.detectors import Predictions


def _pred(scores, areas, size=10):
    """Good images have area 0; a defective image's mask covers `area` pixels."""
    n = len(scores)
    masks = np.zeros((n, size, size), np.uint8)
    for i, a in enumerate(areas):
        masks[i].flat[:a] = 1
    labels = (np.array(areas) > 0).astype(int)
    return Predictions(
        [f"{i}.png" for i in range(n)],
        labels,
        ["good" if a == 0 else "crack" for a in areas],
        np.array(scores, float),
        np.zeros((n, size, size), np.float32),
        masks,
    )


def test_detectability_counts_caught_defects_by_area():
    # 20 good images scoring 0..19: at a 5 % false-reject rate one of them (19) is rejected,
    # so the threshold sits just above 18. Small defects score below it, large ones above.
    good = list(range(20))
    pred = _pred(good + [5, 6, 30, 31], [0] * 20 + [1, 1, 50, 50])
    curve = detectability(pred, frr=0.05, bins=2)
    assert curve["threshold"] == np.nextafter(18.0, np.inf)
    small, large = curve["bins"]
    assert (small["n"], small["caught"]) == (2, 0.0)
    assert (large["n"], large["caught"]) == (2, 1.0)
    assert small["area_lo"] == pytest.approx(0.01) and large["area_hi"] >= 0.5


def test_detectability_needs_masks():
    pred = _pred([0, 1], [0, 1])
    pred.masks = None
    with pytest.raises(ValueError, match="masks"):
        detectability(pred)


def test_format_table_has_every_column_and_marks_missing_values():
    rows = [
        {
            "method": "a",
            "image_auroc": 0.91234,
            "image_auroc_ci": [0.8512, 0.97],
            "pixel_auroc": None,
            "aupro": 0.5,
            "image_f1_max": 0.7,
            "fit_s": 12.4,
            "train_ips": 100.2,
            "predict_ips": 50.6,
            "peak_mb": 900,
            "per_defect": {"crack": 0.8},
        }
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split(" | ")[-1] == "auroc_crack |"
    assert "train_ips" in lines[0]
    assert (
        lines[2] == "| a | 0.912 | 0.85-0.97 | n/a | 0.500 | 0.700 | 12 | 100 | 51 | 900 | 0.800 |"
    )


# --- the benchmark deletes only what it made (issue 10 item 3) -------------------------------


def test_refuses_a_folder_it_did_not_make_and_keeps_it(tmp_path):
    from anomaly.benchmark import BenchmarkError, claim_dir, claim_out

    mine = tmp_path / "runs"
    (mine / "patchknn").mkdir(parents=True)
    (mine / "patchknn" / "notes.txt").write_text("my notes")
    with pytest.raises(BenchmarkError, match="not made by the benchmark.*choose another --out"):
        claim_out(mine)
    with pytest.raises(BenchmarkError, match="not made by the benchmark"):
        claim_dir(mine / "patchknn")
    assert (mine / "patchknn" / "notes.txt").read_text() == "my notes"


def test_rerun_deletes_only_the_files_it_made(tmp_path):
    from anomaly.benchmark import MARK, BenchmarkError, claim_dir, seal_dir

    run = claim_dir(tmp_path / "out" / "ae")
    (run / "overlays").mkdir()
    (run / "overlays" / "a.png").write_bytes(b"png")
    (run / "model.pt").write_bytes(b"weights")
    seal_dir(run, below=True)
    claim_dir(run)  # a rerun: its own files go, the folder is empty and marked again
    assert sorted(p.name for p in run.iterdir()) == [MARK]
    (run / "model.pt").write_bytes(b"weights")
    seal_dir(run, below=True)
    (run / "mine.csv").write_text("a user's file")
    with pytest.raises(BenchmarkError, match="did not make \\(mine.csv\\), so nothing was removed"):
        claim_dir(run)  # refused before anything is removed: its earlier run is kept too
    assert (run / "mine.csv").exists() and (run / "model.pt").exists()


def test_an_unfinished_run_it_made_is_emptied(tmp_path):
    from anomaly.benchmark import MARK, claim_dir

    run = claim_dir(tmp_path / "r")  # marked, never sealed: the worker died
    (run / "config.json").write_text("{}")
    claim_dir(run)
    assert [p.name for p in run.iterdir()] == [MARK]


def _suite(root, sets, tiny, as_dicts=False):
    root.mkdir()
    for name in sets:
        (root / name).symlink_to(tiny, target_is_directory=True)
    listed = [{"name": n} for n in sets] if as_dicts else list(sets)
    (root / "manifest.json").write_text(json.dumps({"sets": listed}))
    return root


def test_discover_sets_reads_a_suite_manifest_and_plain_sets(tmp_path, tiny_cookies):
    from anomaly.benchmark import BenchmarkError, discover_sets

    suite = _suite(tmp_path / "photos", ["coffee", "tiny"], tiny_cookies, as_dicts=True)
    found = discover_sets([str(tiny_cookies), str(suite)])
    assert [(f["suite"], f["name"]) for f in found] == [
        ("tiny", "tiny-tiny"),
        ("photos", "coffee"),
        ("photos", "photos-tiny"),
    ]
    assert found[1]["path"] == str(suite / "coffee")
    with pytest.raises(BenchmarkError, match="no such folder"):
        discover_sets([str(tmp_path / "missing")])


def test_summary_gives_mean_and_worst_set_per_method():
    from anomaly.benchmark import format_summary, summarize

    rows = [
        {
            "suite": "p",
            "set": s,
            "method": "m",
            "image_auroc": a,
            "pixel_auroc": None,
            "aupro": 0.5,
            "fit_s": 1.0,
        }
        for s, a in (("x", 0.9), ("y", 0.7), ("z", 0.8))
    ]
    (s,) = summarize(rows)  # (a failed set: test_walkthrough38, no mean at all)
    assert s["sets"] == 3 and s["mean_image_auroc"] == pytest.approx(0.8)
    assert (s["worst_image_auroc"], s["worst_set"]) == (0.7, "y")
    assert s["mean_pixel_auroc"] is None
    assert s["mean_image_auroc_ci"] is None  # the rows carry no interval
    expected = "| p | m | 3 | 0.800 | n/a | 0.700 | y | n/a | 0.500 | 1 |"
    assert format_summary([s]).splitlines()[2] == expected


def test_interval_of_the_mean_over_sets():
    from anomaly.benchmark_tables import mean_interval

    # each set's interval 0.196 wide = 2 x 1.96 x 0.05: the mean of 4 has error 0.05 x 2 / 4
    rows = [
        {"image_auroc": a, "image_auroc_ci": [a - 0.098, a + 0.098]} for a in (0.7, 0.8, 0.9, 0.8)
    ]
    low, high = mean_interval(rows)
    assert (low, high) == pytest.approx((0.8 - 1.96 * 0.025, 0.8 + 1.96 * 0.025))
    rows = [{"image_auroc": 1.0, "image_auroc_ci": [0.9, 1.0]}] * 2
    assert mean_interval(rows)[1] == 1.0  # clipped to an AUROC
    assert mean_interval([{"image_auroc": 0.9}]) is None
    # one set: its own (asymmetric bootstrap) interval, as its row shows it
    assert mean_interval([{"image_auroc": 0.9, "image_auroc_ci": [0.5, 1.0]}]) == [0.5, 1.0]


@pytest.mark.slow
def test_smoke_benchmark_over_a_suite(tmp_path, tiny_cookies):
    from anomaly.benchmark import MARK, run_benchmark

    suite = _suite(tmp_path / "photos", ["a", "b"], tiny_cookies)
    out, notes = tmp_path / "bench", tmp_path / "docs" / "benchmark-notes.md"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmark:photos -->\nold\n<!-- /benchmark:photos -->\nend\n")
    rows = run_benchmark(
        [str(suite)],
        methods=["patchknn"],
        out=str(out),
        smoke=True,
        notes=notes,
        readme=readme,
        readme_block="photos",
    )
    assert [(r["set"], r["method"]) for r in rows] == [("a", "patchknn"), ("b", "patchknn")]
    assert all(0 <= r["image_auroc"] <= 1 and r["predict_ips"] > 0 for r in rows)
    run = out / "a" / "patchknn"
    assert (run / "model.pt").exists() and (run / MARK).exists()
    result = json.loads((out / "benchmark.json").read_text())
    assert [(s["suite"], s["sets"]) for s in result["summary"]] == [("photos", 2)]
    text = notes.read_text()
    assert "load average" in text and "--smoke" in text and "| photos | patchknn | 2 |" in text
    assert "VNNI: the 8-bit search)" in text or "no VNNI: the float32 search)" in text
    assert (out / "benchmark-notes.md").read_text() == text
    lines = readme.read_text().splitlines()
    assert lines[:3] == ["intro", "<!-- benchmark:photos -->", "| set | patchknn |"]
    assert lines[-2:] == ["<!-- /benchmark:photos -->", "end"] and "old" not in lines
    mean = f"{np.mean([r['image_auroc'] for r in rows]):.3f} / "
    assert any(line.startswith(f"| **mean** | **{mean}") for line in lines)


def _row(set_, method, image, pixel=0.9, pro=0.8, **more):
    row = {"method": method, "image_auroc": image, "pixel_auroc": pixel, "aupro": pro, **more}
    return {"suite": "p", "set": set_, **row} if set_ else row


def test_readme_table_of_one_set_puts_the_most_accurate_first():
    from anomaly.benchmark_tables import readme_table

    rows = [
        _row(None, "a", 0.8, fit_s=2.0, per_defect={"crack": 0.7}),
        _row(None, "b", 0.9, fit_s=3.0, per_defect={"crack": 0.6, "hole": 1.0}),
        {"method": "c", "error": ["boom"]},
    ]
    lines = readme_table(rows).splitlines()
    assert lines[0].startswith("| method | image_auroc | pixel_auroc | aupro | image_f1_max |")
    assert "train_ips" not in lines[0] and lines[0].endswith("| auroc_crack | auroc_hole |")
    assert lines[2].startswith("| b | 0.900 | 0.900 | 0.800 | n/a | 3 |")
    assert lines[3].endswith("| 0.700 | n/a |") and len(lines) == 4  # the failed one is left out


def test_readme_table_of_a_suite_has_mean_and_worst_rows():
    from anomaly.benchmark_tables import readme_table

    rows = [
        _row("x", "a", 0.9),
        _row("y", "a", 0.7, pixel=0.5),
        _row("x", "b", 0.8),
        _row("y", "b", 0.85),
        _row("x", "c", 1.0),
        {"suite": "p", "set": "y", "method": "c", "error": ["boom"]},
    ]
    lines = readme_table(rows).splitlines()
    assert lines[0] == "| set | a | b | c |"
    assert (
        lines[2] == "| x | 0.900 / 0.900 / 0.800 | 0.800 / 0.900 / 0.800 | 1.000 / 0.900 / 0.800 |"
    )
    assert lines[3] == "| y | 0.700 / 0.500 / 0.800 | 0.850 / 0.900 / 0.800 | failed |"
    # c failed on a set: no mean or worst of it; b has the best mean and the best worst set
    assert lines[4] == "| **mean** | 0.800 / 0.700 / 0.800 | **0.825 / 0.900 / 0.800** | - |"
    assert lines[5] == "| **worst set** | 0.700 (y) | **0.800 (x)** | - |"


def test_update_readme_replaces_only_its_block(tmp_path):
    from anomaly.benchmark_tables import update_readme

    readme = tmp_path / "README.md"
    before = "a\n<!-- benchmark:one -->\nold\n<!-- /benchmark:one -->\nb\n<!-- benchmark:two -->\n"
    readme.write_text(before + "keep\n<!-- /benchmark:two -->\n")
    update_readme(readme, "one", "| new |")
    assert readme.read_text() == (
        "a\n<!-- benchmark:one -->\n| new |\n<!-- /benchmark:one -->\nb\n<!-- benchmark:two -->\n"
        "keep\n<!-- /benchmark:two -->\n"
    )
    with pytest.raises(ValueError, match=r"README.md has no block <!-- benchmark:three -->"):
        update_readme(readme, "three", "| x |")
    readme.write_text(readme.read_text() * 2)
    with pytest.raises(ValueError, match="more than once"):
        update_readme(readme, "one", "| x |")
    readme.write_text(readme.read_text()[: len(readme.read_text()) // 2])
    assert "| new |" in readme.read_text() and list(tmp_path.iterdir()) == [readme]


def test_benchmark_refuses_a_readme_without_markers_before_running(tmp_path, tiny_cookies):
    from anomaly.benchmark import BenchmarkError, run_benchmark

    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    run = {"methods": ["meandiff"], "out": str(tmp_path / "b"), "readme": readme}
    with pytest.raises(BenchmarkError, match="add the two lines"):
        run_benchmark(str(tiny_cookies), readme_block="photos", **run)
    readme.write_text("<!-- benchmark:photos -->\n<!-- /benchmark:photos -->\n")
    with pytest.raises(BenchmarkError, match=r"needs --readme-block.*has: photos"):
        run_benchmark(str(tiny_cookies), **run)  # which table: the API has no default either
    assert not (tmp_path / "b").exists()  # nothing ran


# --- how many good images: the train-size curve (issue 15 items 3 and 5) ---------------------


def test_train_size_curve_smoke_via_the_cli(tmp_path, tiny_cookies, capsys):
    from anomaly.benchmark_curves import curve_summary, read_curve, train_size_figure
    from anomaly.cli import main

    out = tmp_path / "curves"
    assert (
        main(
            [
                "benchmark",
                "--curve",
                "train-size",
                "--data",
                str(tiny_cookies),
                "--method",
                "patchknn",
                "--smoke",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = read_curve(out)
    # tiny: 8 good images, 1 held out for the threshold: sizes 1, 2, 4 and all 7
    assert [r["n"] for r in rows] == [1, 2, 4, 7]
    # one held-out image cannot give alpha = 1 %: the smallest possible, 1/2, is used and said
    assert {r["alpha_used"] for r in rows} == {0.5} and {r["n_cal"] for r in rows} == {1}
    assert all(0 <= r["image_auroc"] <= 1 and 0 <= r["escape_rate"] <= 1 for r in rows)
    assert (out / "train_size_patchknn.csv").read_text().startswith("set,method,n,rep,")
    fig = train_size_figure({"tiny": curve_summary(rows)})
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    assert (
        main(
            [
                "benchmark",
                "--curve",
                "train-size",
                "--data",
                str(tiny_cookies),
                "--alpha",
                "0",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "alpha" in capsys.readouterr().err


def test_images_needed_is_where_the_mean_curve_stays_above_target():
    from anomaly.benchmark_curves import curve_summary, images_needed

    auroc = {1: [0.6, 0.7], 2: [0.96, 0.94], 4: [0.9], 8: [0.95], 16: [0.97]}
    rows = [
        {
            "set": "s",
            "method": "m",
            "n": n,
            "image_auroc": a,
            "aupro": None,
            "escape_rate": 0.5,
            "false_reject_rate": 0.0,
            "fit_s": 1.0,
            "alpha_used": 0.01,
        }
        for n, values in auroc.items()
        for a in values
    ]
    rows.append({"set": "s", "method": "m", "n": 32, "error": "ValueError: boom"})
    assert images_needed(rows, 0.95) == 8  # n = 2 reaches 0.95 on average, n = 4 falls back
    assert curve_summary(rows)["image_auroc_min"][0] == 0.6
    assert images_needed(rows, 0.99) is None


def test_an_unfinished_run_owns_only_the_files_a_run_writes(tmp_path):
    from anomaly.benchmark import BenchmarkError, claim_dir

    mine = tmp_path / "mine.csv"
    mine.write_text("a user's table")
    run = claim_dir(tmp_path / "r")  # marked, never sealed: the worker died
    (run / "model.pt").write_bytes(b"weights")
    (run / "sub").mkdir()
    (run / "sub" / "config.json").write_text("{}")  # a run's file name, not where a run puts it
    (run / "history.csv").symlink_to(mine)  # the benchmark writes no links
    with pytest.raises(BenchmarkError, match=r"\(history.csv, sub/config.json\), so nothing"):
        claim_dir(run)
    assert sorted(p.name for p in run.rglob("*")) == sorted(
        [".made-by-benchmark", "config.json", "history.csv", "model.pt", "sub"]
    )
    assert mine.read_text() == "a user's table"
