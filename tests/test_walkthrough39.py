"""Defects found walking through the project as its users do (session 39), each with the test
that failed before its fix."""

from __future__ import annotations


def test_the_report_holds_the_auroc_and_what_made_the_run(scored_ae_run):
    # an audit of session 38: the report, the page a QA engineer files, held no AUROC and no
    # versions, so it could not be checked against metrics.json or a rerun
    import json

    import anomaly

    metrics = json.loads((scored_ae_run / "metrics.json").read_text())
    versions = json.loads((scored_ae_run / "versions.json").read_text())
    ex = anomaly.ThresholdExplorer(scored_ae_run)
    text = ex.report_html()
    ex.close()
    low, high = metrics["image_auroc_ci"]
    assert f"{metrics['image_auroc']:.3f} (95 % interval {low:.2f}-{high:.2f})" in text
    assert f"torch {versions['torch']}" in text and f"python {versions['python']}" in text


def test_an_export_records_the_versions_that_wrote_it(tmp_path, tiny_cookies):
    # an audit of session 38: an exported file said which run and threshold it held, not which
    # package, torch and onnx wrote it
    import json
    from importlib.metadata import version

    import onnxruntime
    import torch
    from helpers import patchknn_export

    path = patchknn_export(tiny_cookies, tmp_path / "run")
    meta = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    made = json.loads(meta["exported_by"])
    assert made["torch"] == torch.__version__ and made["onnx"] == version("onnx")
    assert made["onnxruntime"] == onnxruntime.__version__ and made["anomaly"]
