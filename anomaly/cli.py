"""`python -m anomaly ...`: the command line over the same functions the notebooks call (its
parser, with commands, flags and help, is `anomaly.cli_parser`; this module runs them)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

from anomaly.cli_parser import (  # noqa: F401 (build_parser and EMPTY_DEFAULT re-exported)
    EMPTY_DEFAULT,
    build_parser,
    method_names,
)
from anomaly.cli_predict import StdoutGone, run_predict
from anomaly.config import READ_BY, Config, builds_on, flag_of, ignored_by
from anomaly.safe_files import FULL_DISK, InUse, RunError
from anomaly.terminal import KeepsGoing, is_terminal, log_lines, shell_word, visible
from anomaly.threshold_text import held_out_words, test_set_words, threshold_words

RESUME_HINT = "continue with `python -m anomaly train --out {out} --resume`"
SCORE_AGAIN = "; score it again to finish (its overlays may be incomplete)"  # .written.json


def _config_flags(args) -> dict:
    return {f.name: v for f in fields(Config) if (v := getattr(args, f.name, None)) is not None}


def _train(args) -> None:
    from anomaly.decision import few_held_out
    from anomaly.pipeline import AlreadyTrained, train_run
    from anomaly.runs import RunDir

    flags = _config_flags(args)
    for name in ("data", "source_run"):
        if flags.get(name):
            flags[name] = str(Path(flags[name]).resolve())
    if args.like is not None:
        from anomaly.rerun import same_model_words, train_like

        if args.resume:
            raise ValueError("--like trains a new run and --resume continues one: give one")
        detector = train_like(args.like, args.out, **flags)
        print(f"trained {detector.config.method}: run folder {args.out}")
        print(same_model_words(args.like, args.out))
        if note := few_held_out(RunDir(args.out).threshold(), args.out, detector.config):
            print(note, file=sys.stderr)
        return
    if args.resume:
        config = RunDir(args.out).config().replace(**flags)
        _warn_ignored(config, flags)
        try:
            detector = train_run(config, args.out, resume=True)
        except AlreadyTrained as done:
            print(done)
            return
    else:
        method = flags.pop("method", None) or Config.method
        if method == "kmeans":
            if not flags.get("source_run"):
                raise ValueError("--method kmeans needs --from RUN (a trained ae, unet or vae run)")
            if not RunDir(flags["source_run"]).is_run():
                raise ValueError(
                    f"--from {shell_word(flags['source_run'])} is not a run folder; kmeans clusters a trained "
                    "ae, unet or vae run's features: train one with `python -m anomaly train "
                    "--method unet --data ROOT --out RUN`, then --from RUN"
                )
            source = RunDir(flags["source_run"]).config()
            _warn_decode(flags, source, f"--from {shell_word(flags['source_run'])}")
            config = source.replace(method="kmeans", **flags)
            if Path(config.data).resolve() != Path(source.data).resolve():
                warnings.warn(
                    f"--from {shell_word(flags['source_run'])} was trained on {source.data}; k-means "
                    f"clusters its encoder's features of {config.data}, which it never saw: "
                    "train the encoder on these images for features that fit them",
                    stacklevel=2,
                )
        else:
            if not flags.get("data"):
                raise ValueError("train needs --data ROOT (a data set folder)")
            flags = _encoder_settings(flags)
            config = Config.for_method(method, **flags)
        _warn_ignored(config, flags)
        detector = train_run(config, args.out)
    print(f"trained {detector.config.method}: run folder {args.out}")
    if note := few_held_out(RunDir(args.out).threshold(), args.out, detector.config):
        print(note, file=sys.stderr)
    selection = getattr(detector, "selection", None)
    if isinstance(selection, dict) and "chosen" in selection:
        print(
            f"auto chose {selection['chosen']} (all candidates: "
            f"{RunDir(args.out).file(RunDir.SELECTION)})"
        )


def _encoder_settings(flags: dict) -> dict:
    """`--backbone encoder:RUN` without --size or --channels: the encoder run's (it takes only
    those: `kmeans.encoder_mismatch`), not the method's defaults, which almost never match; and
    its --decode, so that both see a JPEG decoded alike."""
    from anomaly.runs import RunDir, RunError

    backbone = flags.get("backbone") or ""
    if not backbone.startswith("encoder:"):
        return flags
    try:
        trained = RunDir(backbone.split(":", 1)[1]).config()
    except (RunError, OSError, ValueError):
        return flags  # not a run: building the detector names the folder and the fix
    _warn_decode(flags, trained, backbone)
    return {"size": trained.size, "channels": trained.channels, "decode": trained.decode, **flags}


def _warn_decode(flags: dict, source, name: str) -> None:
    """Warn when --decode differs from the run whose encoder a new run builds on."""
    if flags.get("decode") and flags["decode"] != source.decode:
        warnings.warn(
            f"--decode {flags['decode']}: {name} was trained with --decode {source.decode}, so "
            "its encoder saw JPEGs decoded otherwise (leave --decode out to take its own)",
            stacklevel=3,
        )


def _warn_ignored(config: Config, flags: dict) -> None:
    """Say which of the flags given the method never reads: `--epochs` for patchknn changes
    nothing, and a user who passed it should not believe it did (nor `--val-fraction` where
    the run holds out what its source run held out: `train_guards.holds_out_source`)."""
    from anomaly.train_guards import holds_out_source

    method, source = config.method, builds_on(config.method, config.backbone)
    held = bool(source) and "val_fraction" in flags and holds_out_source(config)
    ignored = ignored_by(method, flags, held)

    def why(name: str) -> str:
        if method == "auto":
            return "its candidates bring their own settings"
        if name not in READ_BY:  # kmeans' val_fraction, or an encoder: backbone's
            return f"it holds out the images its {source} run held out"
        return f"read by {', '.join(READ_BY[name])}"

    if ignored:
        given = "; ".join(
            f"{flag_of(f)} ({why(f.name)})" for f in fields(Config) if f.name in ignored
        )
        it = "it" if len(ignored) == 1 else "them"
        warnings.warn(
            f"--method {method} ignores {given}: leave {it} out, or choose a method that reads {it}",
            stacklevel=2,
        )


def _score(args) -> None:
    from anomaly.decision import score_summary
    from anomaly.pipeline import check_workers, score_run
    from anomaly.pixel_eval import parse_pixel_size
    from anomaly.runs import RunDir

    if args.workers is not None:
        check_workers(args.workers)  # before the model loads
    started = time.perf_counter()
    pred, metrics = score_run(
        args.run,
        args.data,
        overlays=not args.no_overlays,
        progress=True,
        out=args.out,
        workers=args.workers,
        pixel_size=parse_pixel_size(args.pixel_size),  # a typo refused before the model loads
    )
    rd = RunDir(args.run)
    threshold = rd.threshold() if rd.has_threshold() else None
    print(score_summary(pred.labels, pred.scores, metrics, threshold, pred.defects))
    for note in metrics.get("notes", []):
        print(f"note: {note}")
    wrote = "scores.csv, metrics.json, predictions.npz" + (
        "" if args.no_overlays else ", overlays/"
    )
    dest, took = pred.meta["out"], time.perf_counter() - started
    print(f"wrote {dest}: {wrote} ({took:.3g} s in all, {len(pred) / took:.3g} images/s)")
    if "replaced" in pred.meta:
        print(f"note: these replace the scores of {pred.meta['replaced']} that {dest} held")
    if Path(dest).resolve() != Path(args.run).resolve():
        print(
            f"these are the scores of {pred.meta['data']}; the run's own, of its data, stay in "
            f"{args.run} (threshold and explore read those). If this is the run's data moved to "
            f"a new place, replace them: add --out {shell_word(args.run)}"
        )


def _threshold(args) -> None:
    """Set the run's threshold by --rule, or without one say the saved threshold; then what it
    does on the held-out good images and the scored test set."""
    from anomaly.calibration import set_threshold
    from anomaly.decision import few_held_out
    from anomaly.runs import RunDir
    from anomaly.threshold_text import calibration_words

    rd = RunDir(args.run).require()
    if args.rule is None:
        if args.value is not None or args.good_images:
            raise ValueError("--value and --good-images set a threshold by a --rule: give one")
        if not rd.has_threshold():
            rd.check_not_in_use("threshold")  # still training: in use, its threshold to come
            rd.require_model("threshold")  # no model: no threshold to set either
            raise RunError(f"{rd} has no threshold saved; set one with --rule (see --help)")
        t = rd.threshold()
        print(f"{threshold_words(t, args.run)}; saved in {args.run}")
    else:
        t = set_threshold(args.run, args.rule, args.value, good_images=args.good_images)
        print(f"{threshold_words(t, args.run)}; saved to {args.run}")
    scores = rd.file(rd.CALIBRATION) if args.good_images else None
    if args.rule and (words := calibration_words(t, scores)):
        print(words)
    print(held_out_words(rd, t.value))
    if broken := test_set_words(rd, t):
        print(broken)
    if args.rule and (note := few_held_out(t, args.run, rd.config())):
        print(note)  # as train and predict say it


def _make_data(args) -> None:
    manifest_file = Path(args.root) / "manifest.json"
    before = manifest_file.stat().st_mtime_ns if manifest_file.is_file() else None
    if args.command == "make-cookies":
        from anomaly.data import make_cookies

        flags = {k: getattr(args, k) for k in ("preset", "seed", "size", "difficulty", "overwrite")}
        manifest = make_cookies(args.root, **flags, progress=True)
    else:
        from anomaly.data.photos import MAX_COUNT, counts_said, make_photos

        for flag, value in (("--good", args.good), ("--defect", args.defect)):
            if value is not None and not 1 <= value <= MAX_COUNT:
                raise ValueError(
                    f"make-photos {flag} {value}: give 1 to {MAX_COUNT}; a test set needs good "
                    "and defective images, or its image AUROC cannot be measured"
                )
        made = make_photos(
            args.root,
            seed=args.seed,
            overwrite=args.overwrite,
            good=args.good,
            defect=args.defect,
            progress=True,
        )
        manifest = {"counts": counts_said(made)}  # per set and kind: not 7 defects in all
    counts = json.dumps(manifest.get("counts", {}))
    if before is not None and manifest_file.stat().st_mtime_ns == before:
        print(f"{args.root}: made before with these settings, every file as written: {counts}")
    else:
        print(f"wrote {args.root}: {counts}")


def _one_line_warnings(previous):
    """A `warnings.showwarning` that prints the package's own warnings as one `warning: ...`
    line, like the errors (they name the file and what it means; the source line of the
    `warnings.warn` call helps nobody), and hands every other warning to `previous`."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if "anomaly" in Path(filename).parts:
            from tqdm import tqdm

            # on a line of its own, not after a progress bar's: tqdm clears the bar and draws
            # it again below; in a log (no terminal) the cleared bar's line is ended first
            out, bars = file or sys.stderr, getattr(tqdm, "_instances", ())
            new_line = "\n" * bool(bars and not is_terminal(out))
            tqdm.write(f"{new_line}warning: {visible(str(message))}", file=out)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


# the flags that name a file or folder: an empty one ("") would mean the working folder
PATH_FLAGS = {"root": "ROOT", "out": "--out", "data": "--data", "run": "--run", "onnx": "--onnx"}
PATH_FLAGS.update(
    good_images="--good-images", notes="--notes", readme="--readme", source_run="--from"
)
PATH_FLAGS["like"] = "--like"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for dest, flag in {**PATH_FLAGS, "images": None}.items():  # an image "": an ERROR row
        given = getattr(args, dest, None)
        for value in given if isinstance(given, list) else [given]:
            if flag and isinstance(value, str) and not value.strip():
                parser.error(f"{flag} {value!r}: an empty path; name a file or folder")
        if isinstance(given, str):  # --out=~/x: no shell expands ~ there; a folder "~" was made
            setattr(args, dest, os.path.expanduser(given))
        elif isinstance(given, list):
            setattr(args, dest, [os.path.expanduser(v) for v in given])
    answers = args.command in ("predict", "explore") or (
        args.command == "threshold" and not args.rule  # what it says is its answer
    )
    if sys.stdout is None and answers:  # >&-: every verdict (the URL, the threshold) lost
        if sys.stderr is not None:
            print(
                f"error: {args.command}'s standard output is closed, where its answer goes",
                file=sys.stderr,
            )
        return 2
    _closed_to_devnull()
    shown, streams = warnings.showwarning, (sys.stderr, sys.stdout)
    warnings.showwarning, (sys.stderr, sys.stdout) = _one_line_warnings(shown), log_lines(*streams)
    if args.command == "train":  # a log reader gone (`train 2>&1 | head`): it trains on
        sys.stderr, sys.stdout = KeepsGoing(sys.stderr), KeepsGoing(sys.stdout)
    try:
        with _signals_interrupt():
            return _main(args)
    finally:
        warnings.showwarning, (sys.stderr, sys.stdout) = shown, streams


def _closed_to_devnull() -> None:
    """A closed stdout or stderr (`>&-`, `2>&-`) made /dev/null on its own descriptor: print
    would fall back to stdout for stderr's words, tqdm would fail, and the next file opened
    would take descriptor 2 and receive what torch or onnxruntime write to stderr."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115  (the process's)


_SIGNALLED: list[int] = []  # the stop signals received while a command ran (`_signals_interrupt`)


@contextlib.contextmanager
def _signals_interrupt():
    """While inside, SIGTERM (a scheduler's or `kill`'s stop) and SIGHUP (the terminal closed)
    end the command as Ctrl-C does: each file written whole or not at all, the run's lock let
    go, the words that say how to go on, and the shell's code 128 + the signal's number (they
    killed it on the spot, leaving the lock and temporary files behind). A signal ignored
    (`nohup`) stays ignored; outside the main thread nothing changes."""
    import signal
    import threading
    from multiprocessing import ProcessError

    def stop(signum, _frame):
        _SIGNALLED.append(int(signum))
        if hasattr(signal, "SIGCHLD"):  # decoding workers stopped by the same signal (a whole
            # process group's) are not reported by torch's handler as a failure, with a trace
            previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))
        raise KeyboardInterrupt(signum)

    def quiet(kind, value, trace):  # nor the lost connection of their tensors' sharer thread
        lost = issubclass(kind, (OSError, EOFError, ProcessError))
        if lost := lost and threading.current_thread() is not threading.main_thread():
            time.sleep(0 if _SIGNALLED else 1)  # the group's workers die first
        if not (lost and _SIGNALLED):
            hooks[0](kind, value, trace)

    previous, hooks = {}, [getattr(sys.excepthook, "quiets", sys.excepthook)]  # not a stale one
    quiet.quiets, _SIGNALLED[:] = hooks[0], []
    if threading.current_thread() is threading.main_thread():
        sys.excepthook = quiet  # kept once stopped: the sharer's thread can fail later
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)  # Windows has no SIGHUP
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # (None: one set outside Python, which cannot be put back)
                signal.signal(signum, handler)
        if sys.excepthook is quiet and not _SIGNALLED:
            sys.excepthook = hooks[0]


def _main(args) -> int:
    try:
        if args.command in ("make-cookies", "make-photos"):
            _make_data(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "score":
            _score(args)
        elif args.command == "predict":
            return run_predict(args)
        elif args.command == "export":
            from anomaly.export import export_onnx, sha256_file  # the SHA-256: a copy's check

            print(f"wrote {(out := export_onnx(args.run, args.out))} (SHA-256 {sha256_file(out)})")
        elif args.command == "threshold":
            _threshold(args)
        elif args.command == "benchmark":
            from anomaly.benchmark import main as benchmark_main
            from anomaly.benchmark_tables import check_readme_block

            check_readme_block(args.readme, args.readme_block)
            benchmark_main(args)
        elif args.command == "explore":
            from anomaly.explorer import serve

            code = serve(args.run, port=args.port)  # Voila's exit code (a failed start: not 0)
            return code if isinstance(code, int) and code > 0 else 0
    except KeyboardInterrupt as stop:  # anomaly.train.Interrupted: Ctrl-C in training
        import signal

        signum = _SIGNALLED[0] if _SIGNALLED else signal.SIGINT  # SIGTERM, SIGHUP: as Ctrl-C
        said = "interrupted" if not _SIGNALLED else f"stopped by {signal.Signals(signum).name}"
        if getattr(stop, "epoch", None) is None:
            hint = SCORE_AGAIN * (args.command == "score")
            if args.command == "train" and getattr(args, "out", None):
                from anomaly.runs import RunDir

                rd = RunDir(args.out)
                if rd.stopped_before_threshold():  # trained, no threshold yet
                    hint = " after training; " + RESUME_HINT.format(out=shell_word(args.out))
                elif rd.file(rd.CONFIG).is_file() and not rd.has_model():  # one pass, cut
                    hint = " before its model was saved; " + _train_again(args.out)
            _last_words(f"\n{said}{hint}")
            return 128 + signum
        from anomaly.run_checkpoints import TRAIN_AGAIN

        out = getattr(args, "out", "RUN")
        _last_words(
            f"\n{said} after epoch {stop.epoch}; "
            + (TRAIN_AGAIN if stop.epoch == 0 else RESUME_HINT).format(out=shell_word(out))
        )
        return 128 + signum
    except (StdoutGone, BrokenPipeError) as stop:  # the reader stopped (`... | head`): quietly,
        # as Unix tools; its work is done (a threshold saved before its words were cut)
        if not isinstance(stop, StdoutGone) and not _terminal_pipe_gone():
            return _error(stop)  # another pipe (a decoding worker's, say): an error to report
        null = os.open(os.devnull, os.O_WRONLY)  # and the interpreter's last flush must not
        try:  # fail again, on stdout or on stderr (`2>&1 | head`)
            os.dup2(null, sys.stdout.fileno())
            os.dup2(null, sys.stderr.fileno())
        except (OSError, ValueError):  # no file descriptor (a notebook's stream)
            pass
        finally:
            os.close(null)
        return 141  # 128 + SIGPIPE
    except InUse as err:  # another process writes there: may work later, for a scheduler
        _error(err)
        return 75  # sysexits' EX_TEMPFAIL
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:
        return _error(err)
    return 0


def _train_again(out: str) -> str:
    from anomaly.run_checkpoints import TRAIN_AGAIN

    return TRAIN_AGAIN.format(out=shell_word(out)) + ", as its config.json records them"


def _last_words(text: str) -> None:
    """Say how a stopped command ends, where anyone can still read it: the terminal that
    closed (SIGHUP) fails the write (EIO), and the exit status must still come back."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


def _terminal_pipe_gone() -> bool:
    """Whether stdout's or stderr's reader has gone (a pipe whose read end is closed polls as
    an error), so a BrokenPipeError was the command's own words cut, not another pipe's."""
    import select

    for stream in (sys.stdout, sys.stderr):
        try:
            poll = select.poll()
            poll.register(stream.fileno(), select.POLLOUT)
            if any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0)):
                return True
        except (OSError, ValueError, AttributeError):  # no descriptor (a notebook's stream)
            continue
    return False


def _error(err: Exception) -> int:
    """Print `err` as one `error:` line (our errors name the file and the fix; a traceback from
    deep inside torch helps nobody) and return the exit status 2."""
    message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if message.startswith("Caught ") and "Original Traceback" in message:
        # raised in a DataLoader worker (--workers N): torch wraps it in the worker's
        # traceback; its last line is our message
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(err, (NotADirectoryError, FileExistsError)) and err.filename:
        from anomaly.safe_files import file_above

        if (above := file_above(os.path.join(err.filename, "x"))) is not None:
            whole = os.path.abspath(err.filename) == str(above)
            path = "" if whole else f" of the path {err.filename}"
            message = f"{above} is a file where a folder{path} goes; choose another path"
    if isinstance(err, OSError) and err.errno in FULL_DISK and not err.filename:
        message += " (standard output, or a file it does not name): free space, or write elsewhere"
    print(f"error: {visible(message)}", file=sys.stderr)
    return 2
