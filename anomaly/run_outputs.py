"""What `score` writes into a run folder, and clearing it when the model changes: the part of
`anomaly.runs.RunDir` that decides which of those files are score's (`ScoreOutputs`).

A run folder is untrusted, and files of score's names may be the user's own (a table saved
there by hand, a folder that only looked like a run): only a file that reads as what `score`
writes is removed, each on its own; a user's file of the same name stays, and is named.
"""

from __future__ import annotations

import contextlib
import zipfile

from anomaly.data.files import named
from anomaly.safe_files import output_folder, parse_record
from anomaly.terminal import shell_word
from anomaly.written_files import marked_overlay, remove_written

PREDICTION_ARRAYS = {"scores.npy", "maps.npy", "method.npy"}  # `Predictions.save` writes these
SCORE_METRICS = {"predict_images_per_s", "threshold"}  # `pipeline.score_run` adds these


class ScoreOutputs:
    """`RunDir`'s methods for score's outputs (it supplies `file`, `path`, `overlays` and the
    names `SCORED`, `OVERLAYS`, `OVERLAYS_WRITTEN`, `PREDICTIONS`, `SCORES`, `METRICS`,
    `SCORES_HEADER`)."""

    def replace_threshold(self, threshold) -> tuple:
        """`save_threshold(threshold)` (its path), and words naming the overlays `score` drew at
        another threshold, removed ("" where none was): their verdicts and colours were the
        earlier threshold's, and an overlay saying PASS for a part `predict` now rejects is a
        picture that lies. Only score's own go (`clear_outputs`' rule); `score` draws them
        again. The same value and pixel threshold (one not saved: the held-out maps' upper end,
        as `overlays.run_scale` takes it) keep them."""
        try:
            old = self.threshold() if self.has_threshold() else None
            drawn = old and (old.value, self._pixel_threshold(old))
        except (ValueError, OSError):  # damaged, or another model's: whatever drew them
            drawn = None
        path = self.save_threshold(threshold)
        try:
            same = drawn == (threshold.value, self._pixel_threshold(threshold))
        except (ValueError, OSError):  # no held-out maps' range: their colours unknown
            same = False
        if same:
            return path, ""
        gone = []
        for folder in [self, *self.scored_elsewhere()]:
            if folder.overlays.is_symlink() or not folder.overlays.is_dir():
                continue  # (nothing is removed through a link)
            before = len(list(folder.overlays.iterdir()))  # no record: score's marked PNGs
            remove_written(folder.overlays, self.OVERLAYS_WRITTEN, marked_overlay)
            if not folder.overlays.is_dir() or len(list(folder.overlays.iterdir())) < before:
                gone.append(folder)
        if not gone:
            return path, ""
        where = named([str(f.overlays) for f in gone], 2)
        again = f"`python -m anomaly score --run {shell_word(self.path)}`"
        again += " (with --data DATA for each data set in scored/)" * any(
            f is not self for f in gone
        )
        return path, (
            f"removed score's overlays in {where}: drawn at the earlier threshold, their verdicts "
            f"and colours no longer hold; draw them again with {again}"
        )

    def _pixel_threshold(self, threshold) -> float:
        saved = threshold.params.get("pixel_threshold")
        return float(saved) if saved is not None else self.map_range()[1]

    def scored_elsewhere(self) -> list:
        """The folders in scored/ where `score --data OTHER` wrote other data's scores."""
        scored = self.file(self.SCORED)
        if not scored.is_dir() or scored.is_symlink():  # a link: nothing is removed through it
            return []
        return [
            type(self)(p) for p in sorted(scored.iterdir()) if p.is_dir() and not p.is_symlink()
        ]

    def scored_meta(self) -> dict:
        """What `score` recorded in this folder's predictions.npz (`meta`: the run, the data,
        the model's SHA-256 ...), or {} where there is no such file, or it does not read."""
        import numpy as np

        try:
            with np.load(self.file(self.PREDICTIONS), allow_pickle=False) as z:
                meta = parse_record(str(z["meta"]), self.file(self.PREDICTIONS))
        except (OSError, ValueError, KeyError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def written_by_score(self, name: str) -> bool:
        """Whether the file `name` (one of `SCORE_OUTPUTS`) here reads as what `score` writes:
        predictions.npz with `Predictions.save`'s arrays, scores.csv with its header,
        metrics.json with the fields score adds."""
        path = self.file(name)
        if path.is_symlink() or not path.is_file():
            return False
        try:
            if name == self.PREDICTIONS:
                with zipfile.ZipFile(path) as z:
                    return PREDICTION_ARRAYS <= set(z.namelist())
            with open(path, "rb") as f:
                most = 1 << 16 if name == self.SCORES else 1 << 26  # (read(n) reserves n bytes)
                head = f.read(min(most, path.stat().st_size + 1))
            if name == self.SCORES:
                return (
                    head.split(b"\n", 1)[0].rstrip(b"\r") == ",".join(self.SCORES_HEADER).encode()
                )
            record = parse_record(head.decode("utf-8"), path)  # RunError: a ValueError
            return isinstance(record, dict) and SCORE_METRICS <= set(record)
        except (OSError, ValueError, zipfile.BadZipFile):
            return False

    def clear_outputs(self) -> list[str]:
        """Remove what `score` wrote, for the run's data and in scored/ for other data (the
        model changed, so they describe another model); anything else there stays, and what
        has score's names but not its contents is named as kept."""
        folders = [self, *self.scored_elsewhere()]
        for folder in folders:
            if folder.overlays.is_symlink():
                output_folder(folder.overlays)  # refuses it, before anything is removed
        removed = []
        for folder in folders:
            where = "" if folder is self else f"{folder.path.relative_to(self.path)}/"
            if folder is not self and not folder.written_by_score(self.PREDICTIONS):
                removed.append(f"nothing of {where} (score did not write it)")
                continue
            kept = []
            for name in self.SCORE_OUTPUTS:
                if folder.written_by_score(name):
                    folder.file(name).unlink()
                    removed.append(where + name)
                elif folder.file(name).exists() or folder.file(name).is_symlink():
                    kept.append(where + name)
            if kept:
                removed.append(f"but not {named(kept, 3)} (score did not write it)")
            if folder.overlays.is_dir():
                mine = remove_written(folder.overlays, self.OVERLAYS_WRITTEN, marked_overlay)
                removed.append(
                    f"{where}{self.OVERLAYS}/" + (f" (but not {named(mine, 3)})" if mine else "")
                )
            if folder is not self and not any(folder.path.iterdir()):
                folder.path.rmdir()
        with contextlib.suppress(OSError):  # left when it holds anything else
            self.file(self.SCORED).rmdir()
        return removed
