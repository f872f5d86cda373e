"""Session 38's walkthroughs: each test fails without the fix it names."""

from __future__ import annotations

from helpers import copy_run


def test_an_explorer_page_reports_the_threshold_saved_since_it_read_it(scored_ae_run, tmp_path):
    # a page left open while `threshold` saved another threshold exported a report (and a
    # snapshot) calling its own outdated threshold "saved": a QA record of a threshold no
    # command uses
    import anomaly
    from anomaly.calibration import set_threshold

    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = anomaly.ThresholdExplorer(run)
    old = ex.run.saved.value
    set_threshold(run, "manual", old * 3)
    report = ex.report_html()
    assert f"{old * 3:.4g}" in report and "changed since this page read it" in ex.status.value
    assert ex.run.saved.value == old * 3
    ex.close()
