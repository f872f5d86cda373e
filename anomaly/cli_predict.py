"""`python -m anomaly predict`: score image files with a run (or an exported file) and its
threshold, a row per image as it is scored (`anomaly.cli` runs the other commands)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from anomaly.terminal import printable, shell_word, visible
from anomaly.threshold_text import threshold_words


def run_predict(args) -> int:
    """`predict`: rows as images are scored (an ERROR row after its reason, on stderr), then
    the count of what went wrong and the threshold's words; the exit status (2 when an image or
    overlay failed)."""
    if args.out and args.no_overlays:
        raise ValueError("--out is where overlays go, and --no-overlays writes none: give one")
    overlays = not args.no_overlays
    from anomaly.predict import image_tree, overlays_lost

    images = image_tree(args.images) if args.recursive else args.images
    if args.onnx:
        from anomaly.export_predict import predict_files

        if args.workers is not None:
            raise ValueError(
                "--workers is for predict --run: predict --onnx decodes in its own process "
                "(leave --workers out)"
            )
        results, threshold = predict_files(args.onnx, images, args.out, overlays, each=print_row)
    else:
        from anomaly.pipeline import check_workers
        from anomaly.predict import predict_images

        if args.workers is not None:
            check_workers(args.workers)  # before the model loads or predict/ is made
        results, threshold = predict_images(
            args.run,
            images,
            args.out,
            workers=args.workers,
            overlays=overlays,
            each=print_row,
        )
    good = [r for r in results if "error" not in r]
    broken = [r["path"] for r in good if not math.isfinite(r["score"])]
    if broken:
        print(
            f"error: {len(broken)} image(s) scored NaN or infinite, e.g. {visible(broken[0])}, "
            "and were rejected: the model gives no usable scores; train the run again",
            file=sys.stderr,
        )
    failed = [r for r in results if "error" in r]  # each said as its row was printed
    if not results:
        print("error: no images found in " + visible(", ".join(args.images)), file=sys.stderr)
        return 2
    if lost := overlays_lost(results):
        print(f"error: {printable(lost)}", file=sys.stderr)
    if failed:
        rows = "images" if not any(os.path.isdir(r.get("path", "")) for r in failed) else "rows"
        print(  # (a folder not searched is a row too: not an image)
            f"error: {len(failed)} of the {len(results)} {rows} were not scored (their rows "
            "say ERROR; why is named above)",
            file=sys.stderr,
        )
    if good:
        where = good[0]["overlay"]
        where = (
            f"overlays in {Path(where).parent}{piling(Path(where).parent)}"
            if where
            else "no overlays written"
        )
        run = args.run or run_of_export(args.onnx)
        print(f"{threshold_words(threshold, run)}; {where}", file=sys.stderr)
        from anomaly.decision import few_held_out
        from anomaly.runs import RunDir

        config = RunDir(args.run).config() if args.run is not None else None
        if note := few_held_out(threshold, run, config):  # as train said it
            again = f"; then export the run again: python -m anomaly export --run {shell_word(run)}"
            print(note + again * bool(args.onnx), file=sys.stderr)
    return 0 if not failed and not broken and not lost else 2


PILE_BYTES = 2**30  # an overlay folder this large is said to grow: 0.8 MB an image at camera size


def piling(folder: Path) -> str:
    """Words for an overlay folder `predict` has filled past `PILE_BYTES` (its overlays are
    never replaced, so a line's folder only grows), or ""."""
    import os

    count = size = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".png") and entry.is_file(follow_symlinks=False):
                count, size = count + 1, size + entry.stat(follow_symlinks=False).st_size
    if size < PILE_BYTES:
        return ""
    return (
        f" (it holds {count} overlay{'s' * (count != 1)}, {size / 2**30:.1f} GB, and grows with "
        "every call: move old ones away, give --out a folder per day, or --no-overlays)"
    )


def run_of_export(onnx: str) -> str:
    """The run folder an exported file sits in (`export` writes RUN/model.onnx), or "RUN"."""
    from anomaly.runs import RunDir

    folder = Path(onnx).parent
    return str(folder) if RunDir(folder).is_run() else "RUN"


class StdoutGone(Exception):
    """predict's stdout was closed by its reader (a pipe into `head`)."""


def print_row(r: dict) -> None:
    """`predict`'s row for one input, printed (and flushed) as soon as it is scored, so a long
    run stopped part-way keeps its verdicts: tab-separated, names made printable."""
    from anomaly.terminal import printable

    cols = ("-", "ERROR", "-")
    if "error" not in r:
        cols = (r["shown"], r["verdict"], printable(r["overlay"] or "-"))
    else:  # why, beside its row in a log of both streams, and kept when the run is stopped
        print(f"error: {printable(r['error'])}", file=sys.stderr, flush=True)
    try:
        print("\t".join((printable(r["path"]), *cols)), flush=True)
    except BrokenPipeError:  # this pipe only: another broken pipe is an error to report
        raise StdoutGone from None
    except OSError as err:  # a full disk under `> rows.tsv`: said as where it went wrong
        from anomaly.safe_files import RunError

        raise RunError(f"cannot write predict's rows to its standard output ({err.strerror})")
