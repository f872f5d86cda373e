"""Work done beside the model by threads (`anomaly.prefetch`, `safe_files.atomic_meanwhile`):
the same results in the same order, errors raised where the caller is, and nothing left behind
or half-written when either side fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly.config import Config
from anomaly.pipeline import decoding_loader
from anomaly.prefetch import in_threads, read_ahead
from anomaly.safe_files import atomic_meanwhile


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "anomaly-read-ahead"]


def test_read_ahead_keeps_the_order_and_reads_in_another_thread():
    readers = []

    def items():
        for i in range(7):
            readers.append(threading.current_thread().name)
            yield i

    assert list(read_ahead(items())) == list(range(7))
    assert set(readers) == {"anomaly-read-ahead"} and not _reader_threads()


def test_read_ahead_raises_the_readers_error_at_the_item_it_stopped_at():
    def items():
        yield 1
        yield 2
        raise ValueError("data/test/crack/003.png: the file is truncated")

    got = []
    with pytest.raises(ValueError, match="003.png"):
        got.extend(read_ahead(items()))
    assert got == [1, 2] and not _reader_threads()


def test_read_ahead_stops_the_reader_when_the_caller_stops():
    read = []

    def items():
        for i in range(1000):
            read.append(i)
            yield i

    batches = read_ahead(items(), depth=2)
    assert next(batches) == 0
    batches.close()  # the caller's loop ended early (an error of its own)
    assert not _reader_threads()
    assert len(read) <= 5  # the one handed over, two waiting, one being read: no more


def test_decoding_loader_gives_the_same_batches_with_and_without_the_thread():
    data = [{"image": torch.full((1, 2, 2), float(i))} for i in range(10)]
    loader = decoding_loader(data, Config(batch_size=3, workers=0))
    plain = torch.utils.data.DataLoader(data, batch_size=3)
    got, want = list(loader), list(plain)
    assert len(loader) == 4 and len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert torch.equal(a["image"], b["image"])


def test_in_threads_keeps_the_order_and_raises_the_first_error():
    def slow_square(x):
        time.sleep(0.01 * (5 - x % 5))  # later items end first
        return x * x

    assert in_threads(slow_square, range(12), threads=3) == [x * x for x in range(12)]

    def fails_at_four(x):
        if x >= 4:
            raise OSError(f"image {x}: no space left")
        return x

    with pytest.raises(OSError, match="image 4"):
        in_threads(fails_at_four, range(8), threads=2)
    assert in_threads(slow_square, [], threads=2) == []


def _npz_writer(values):
    def write(f):
        np.savez(f, values=values)

    return write


def test_atomic_meanwhile_puts_the_file_in_place_when_both_end_well(tmp_path):
    path = tmp_path / "predictions.npz"
    with atomic_meanwhile(path, _npz_writer(np.arange(5))):
        assert not path.exists()  # not before the block has ended
    assert np.load(path)["values"].tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]


def test_atomic_meanwhile_leaves_the_old_file_when_the_block_fails(tmp_path):
    path = tmp_path / "predictions.npz"
    np.savez(path, values=np.array([7]))
    with (
        pytest.raises(RuntimeError, match="metrics"),
        atomic_meanwhile(path, _npz_writer(np.arange(5))),
    ):
        raise RuntimeError("the metrics failed")
    assert np.load(path)["values"].tolist() == [7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]  # no temporary


def test_atomic_meanwhile_raises_the_writers_error_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "predictions.npz"
    np.savez(path, values=np.array([7]))

    def broken(f):
        f.write(b"half a file")
        raise OSError("the writer failed")

    with pytest.raises(OSError, match="writer failed"), atomic_meanwhile(path, broken):
        pass
    assert np.load(path)["values"].tolist() == [7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]


def test_predict_paints_overlays_in_threads_as_one_at_a_time_would(
    scored_ae_run, tiny_cookies, tmp_path, monkeypatch
):
    """`predict` paints and encodes a batch's overlays one per core, then writes them in the
    images' order: the same files, under the same names, as painting one at a time gives;
    files of one name from two folders are told apart in order, and an unreadable file among
    them keeps its place."""
    import anomaly.predict as predict_module

    good = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    crack = sorted((tiny_cookies / "test" / "crack").glob("*.png"))[:2]
    assert good[0].name == crack[0].name  # 000.png in both: the second is named by its folder
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    files = [good[0], crack[0], broken, good[1], crack[1]]
    threaded, _ = predict_module.predict_images(scored_ae_run, files, tmp_path / "threads")
    monkeypatch.setattr(predict_module, "in_threads", lambda fn, items: [fn(x) for x in items])
    alone, _ = predict_module.predict_images(scored_ae_run, files, tmp_path / "alone")
    assert [Path(r["path"]).name for r in threaded] == [f.name for f in files]
    assert "error" in threaded[2] and sum("error" in r for r in threaded) == 1
    names = [Path(r["overlay"]).name for r in threaded if "overlay" in r]
    assert names == [Path(r["overlay"]).name for r in alone if "overlay" in r]
    assert names[:2] == [f"{good[0].stem}_overlay.png", f"crack_{crack[0].stem}_overlay.png"]
    for name in names:
        assert (tmp_path / "threads" / name).read_bytes() == (
            tmp_path / "alone" / name
        ).read_bytes()
    assert [r.get("score") for r in threaded] == [r.get("score") for r in alone]
