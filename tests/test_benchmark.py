"""The benchmark's table and detectability curve (the full run is `make benchmark`)."""

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
    return Predictions([f"{i}.png" for i in range(n)], labels,
                       ["good" if a == 0 else "crack" for a in areas], np.array(scores, float),
                       np.zeros((n, size, size), np.float32), masks)


def test_detectability_counts_caught_defects_by_area():
    # 20 good images scoring 0..19: at a 5 % false-reject rate the threshold is their 95th
    # percentile (18.05). Small defects score below it, large ones above.
    good = list(range(20))
    pred = _pred(good + [5, 6, 30, 31], [0] * 20 + [1, 1, 50, 50])
    curve = detectability(pred, frr=0.05, bins=2)
    assert curve["threshold"] == pytest.approx(np.quantile(good, 0.95))
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
    rows = [{"method": "a", "image_auroc": 0.91234, "pixel_auroc": None, "aupro": 0.5,
             "image_f1_max": 0.7, "fit_s": 12.4, "train_ips": 100.2, "predict_ips": 50.6,
             "peak_mb": 900, "per_defect": {"crack": 0.8}}]
    lines = format_table(rows).splitlines()
    assert lines[0].split(" | ")[-1] == "auroc_crack |"
    assert "train_ips" in lines[0]
    assert lines[2] == "| a | 0.912 | n/a | 0.500 | 0.700 | 12 | 100 | 51 | 900 | 0.800 |"
