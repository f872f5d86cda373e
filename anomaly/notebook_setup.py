"""What every notebook calls first: one smoke switch, and data and runs made on demand.

`settings()` reads the smoke switch from the environment (`ANOMALY_SMOKE`, set by `make test`):
smoke runs use the tiny cookie set at 64 px and one epoch; the default is the benchmark preset at
each method's default size and budget. Data and runs go under `home()`: $ANOMALY_HOME, or the
working folder (its parent for the repository's `notebooks/`), never next to the package.
The checks of the arguments the figures take (run folders, counts) are here too.
`anomaly.notebook` re-exports these names (notebooks call them as `nb.settings()` and so on).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "ANOMALY_HOME"  # where notebooks keep data/ and runs/ (default: the working folder)


def home() -> Path:
    """The folder notebooks write `data/` and `runs/` under, never the installed package's.

    $ANOMALY_HOME when set; otherwise the current working folder, except that a working folder
    named `notebooks` (where Jupyter starts a notebook of this repository) means its parent, so
    the notebooks reuse the `runs/benchmark` that `make benchmark` wrote at the top (and train
    what it lacks in `runs/notebooks`).
    """
    value = os.environ.get(HOME_ENV, "").strip()
    if value:
        try:
            path = Path(value).expanduser().resolve()
        except RuntimeError:  # ~user of no such user
            raise ValueError(
                f"{HOME_ENV}={value!r}: no such home folder; set it to a folder path"
            ) from None
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{HOME_ENV}={value!r} is a file; set it to a folder (notebooks write data/ "
                "and runs/ under it), or unset it to use the working folder"
            )
        return path
    cwd = Path.cwd().resolve()
    return cwd.parent if cwd.name == "notebooks" else cwd


def _check_writable(path: Path) -> None:
    """Refuse, naming the setting, to make `path` under a folder nobody can write to here
    (the first of its parents that exists), before a notebook spends minutes training."""
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        where = f"{HOME_ENV}={os.environ[HOME_ENV]!r}" if os.environ.get(HOME_ENV) else "home()"
        raise ValueError(
            f"cannot write {path}: {parent} is not a folder this user can write to; set "
            f"{HOME_ENV} to one (now {where})"
        )


def shown(what) -> str:
    """A path from the notebooks' home (`data/...`, `runs/...`, as README writes them) when it
    is under it; anything else (a data set, a message) as text with the home's paths so
    written. A web reader of a committed notebook sees no folder of the machine it ran on."""
    if isinstance(what, Path):
        try:
            return str(what.resolve().relative_to(home()))
        except ValueError:
            return str(what)
    return str(what).replace(f"{home()}{os.sep}", "")


@dataclass
class Settings:
    smoke: bool
    preset: str
    size: int | None  # None = each method's default
    epochs: int | None  # None = each method's default
    data_dir: Path
    runs_dir: Path
    seed: int = 7  # the cookies' (`make-cookies --seed 7`, as `make benchmark` makes them)
    train_seed: int = 0  # the runs' (as `make benchmark` trains them: its --seed, default 0)

    @property
    def own_runs(self) -> Path:
        """Where the notebooks train runs of their own: `runs/notebooks`, beside the
        `runs/benchmark` of `make benchmark` (a smoke run: `runs_dir` itself). The benchmark
        deletes nothing it did not make, so a run a notebook trained in its folder stopped
        `make benchmark` until the reader moved it away."""
        return self.runs_dir if self.smoke else self.runs_dir.parent / "notebooks"

    def run_folder(self, name: str, data: Path | None = None) -> Path:
        """The run `name` to show: the benchmark's (`runs_dir/name`) when it holds a scored run
        of `data` (default `data_dir`) at full settings, else the notebooks' own
        (`own_runs/name`, trained there if it is not yet): a `benchmark --smoke`, or one of
        other data, in runs/benchmark is not shown as the benchmark's."""
        from anomaly.benchmark import SMOKE
        from anomaly.runs import RunDir, RunError

        made = self.runs_dir / name
        if not RunDir(made).has_metrics():
            return self.own_runs / name
        try:
            trained = RunDir(made).config()
        except (RunError, ValueError):
            return self.own_runs / name  # a damaged config.json: the notebooks train their own
        same_data = os.path.abspath(trained.data) == os.path.abspath(data or self.data_dir)
        smoke_size = trained.size <= SMOKE["size"]  # `benchmark --smoke` (64 px, one epoch)
        if not same_data or (smoke_size and not self.smoke):
            why = f"it was trained on {trained.data}" if not same_data else "a --smoke run"
            print(f"not showing {shown(made)} ({why}); the notebooks use their own run")
            return self.own_runs / name
        return made


def light_figures(dpi: int = 72, quality: int = 80) -> None:
    """Inline figures as JPEG at a modest dpi: photo grids are most of a notebook's weight, and
    the committed notebooks must stay small (about a tenth of PNG at the default dpi)."""
    import matplotlib

    matplotlib.rcParams["figure.dpi"] = dpi
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # not in IPython: nothing to configure
        return
    if get_ipython() is not None:
        set_matplotlib_formats("jpeg", pil_kwargs={"quality": quality})


SMOKE_ENV = "ANOMALY_SMOKE"
_OFF, _ON = ("", "0", "false", "no", "off"), ("1", "true", "yes", "on")


def smoke_switch() -> bool:
    """$ANOMALY_SMOKE as a switch: unset, empty, 0, false, no or off mean a full run; 1, true,
    yes or on a smoke run (any case). Anything else is refused: `ANOMALY_SMOKE=false` must not
    quietly give a smoke run that looks like the benchmark."""
    value = os.environ.get(SMOKE_ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(
        f"{SMOKE_ENV}={os.environ[SMOKE_ENV]!r} is not a switch: set it to 1 (or true, yes, on) "
        "for a smoke run, or to 0 (or false, no, off), or unset it, for the full settings"
    )


def settings(smoke: bool | None = None, say: bool = True) -> Settings:
    """Notebook settings from the smoke switch (the `ANOMALY_SMOKE` environment variable); also
    makes inline figures light (`light_figures`). `say`: print which settings (and, full, the
    data and runs folders; a notebook on other folders says its own)."""
    light_figures()
    if smoke is None:
        smoke = smoke_switch()
    root = home()
    if smoke:
        s = Settings(True, "tiny", 64, 1, root / "data" / "smoke", root / "runs" / "smoke")
    else:
        s = Settings(
            False, "benchmark", None, None, root / "data" / "cookies", root / "runs" / "benchmark"
        )
    if say:
        print(settings_words(s, s.data_dir, s.runs_dir))
    return s


def settings_words(s: Settings, data: Path, runs: Path) -> str:
    """Which settings a notebook runs with, and (full) on which data and runs folders."""
    if s.smoke:
        return "smoke settings (tiny data, 64 px, 1 epoch: a check of the wiring, not results)"
    return f"full settings: {shown(data)}, runs in {shown(runs)}"


def ensure_cookies(s: Settings, preset: str | None = None, size: int = 256) -> Path:
    """Generate the cookie set once (the generator refuses to mix two different sets)."""
    from anomaly.data import make_cookies

    preset = preset or s.preset
    root = s.data_dir if preset == s.preset else s.data_dir.parent / preset
    size = s.size or size if preset == s.preset else size
    if not (root / "manifest.json").exists():
        _check_writable(root)
        make_cookies(root, preset=preset, seed=s.seed, size=size)
    return root


def own_copy(s: Settings, run: Path) -> Path:
    """`run` to save something into (a threshold): itself, unless `make benchmark` wrote it;
    then a copy in the notebooks' own folder (`own_runs`, the first free `<name>`, `<name>-2`,
    ... or one already holding the same model.pt), so the benchmark's runs keep the thresholds
    the benchmark chose."""
    import shutil

    from anomaly.runs import RunDir
    from anomaly.threshold_file import model_sha256

    run = Path(run)
    if s.own_runs.resolve() == s.runs_dir.resolve() or run.resolve().parent != s.runs_dir.resolve():
        return run
    model = model_sha256(RunDir(run).file(RunDir.MODEL))
    for i in range(1, 100):
        copy = s.own_runs / (run.name if i == 1 else f"{run.name}-{i}")
        if not copy.exists():
            shutil.copytree(run, copy)
            print(f"a copy of {shown(run)} in {shown(copy)}: the benchmark's run stays as it was")
            return copy
        if model_sha256(RunDir(copy).file(RunDir.MODEL)) == model:
            return copy
    raise FileExistsError(f"{s.own_runs} holds 99 runs named {run.name}-N: move some away")


def ensure_run(
    s: Settings, method: str, data: Path | None = None, source: str | None = None, **overrides
) -> Path:
    """The scored run of `method` (`Settings.run_folder`): the one `make benchmark` wrote when
    there is one, so the notebooks show the benchmark's runs instead of training them twice;
    else trained and scored now in the notebooks' own folder, unless it is there already.

    `overrides` (and `s.size`, `s.epochs` where set) are the run's settings: a run of other
    settings is not used (one of these is used or trained beside it, in a tagged folder). A
    training the kernel's interrupt stopped is continued from its last epoch when the cell runs
    again; a run another process (another notebook) is training is waited for.
    """
    from anomaly.safe_files import InUse

    waiting = False
    while True:
        try:
            return _ensure_run(s, method, data, source, overrides)
        except InUse as busy:
            if not waiting:  # its first sentence: the rest is advice for the shell
                said = str(busy).split(". Wait for it")[0]
                print(f"{said}: waiting for it (interrupt the kernel to stop waiting) ...")
                waiting = True
            time.sleep(IN_USE_POLL_S)


IN_USE_POLL_S = 2.0


def _ensure_run(s: Settings, method: str, data, source, overrides: dict) -> Path:
    from anomaly.config import Config
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir, load_config

    run = s.run_folder(method if source is None else f"{source}_{method}", data)
    wanted = data if data is not None or source is not None else s.data_dir
    sizes = {"size": s.size, "epochs": s.epochs} if source is None else {}
    settings = {**{k: v for k, v in sizes.items() if v is not None}, **overrides}
    if RunDir(run).has_model() and (why := _other_settings(run, wanted, settings)):
        print(f"not using {shown(run)} ({why}): a run of these settings is used or trained")
        where = os.path.realpath(wanted) if wanted is not None else None  # a link: its folder
        tag = hashlib.sha256(repr((where, sorted(settings.items()))).encode()).hexdigest()
        run = run.with_name(f"{run.name}-{tag[:8]}")
    if RunDir(run).has_metrics():
        if not RunDir(run).has_current_metrics():  # scored by an older evaluation: in a copy
            run = own_copy(s, run)  # of the benchmark's run, which stays as the benchmark wrote it
            if not RunDir(run).has_current_metrics():
                score_run(run)
        print(f"using the trained run {shown(run)}")
        return run
    _check_writable(run)
    if source is not None:
        src = s.run_folder(source)
        config = load_config(src).replace(method=method, source_run=str(src), seed=s.train_seed)
        config = config.replace(**overrides)
    else:
        config = Config.for_method(method).replace(
            data=str(data or ensure_cookies(s)), seed=s.train_seed, **settings
        )
    _train_or_continue(run, config, progress=not s.smoke)
    score_run(run)
    print(f"trained and scored {shown(run)}")
    return run


def _train_or_continue(run: Path, config, progress: bool) -> None:
    """Train `run`; or continue it where the kernel's interrupt stopped it (from its last epoch,
    or only its held-out scoring); or nothing, when only its scoring was stopped."""
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    rd = RunDir(run)
    if rd.path.is_dir():  # before any work: `ensure_run` waits, and tries again
        rd.check_not_in_use("train")
    if rd.has_model():
        stopped = rd.stopped_before_threshold()
        if not stopped and rd.checkpoint().get("complete", True):
            return  # trained; its scoring was stopped
        if stopped or rd.has_last():
            print(f"continuing the interrupted run {shown(run)}")
            train_run(rd.config(), run, resume=True, progress=progress)
            return
    train_run(config, run, progress=progress)


def _other_settings(run: Path, data: Path | None, overrides: dict) -> str | None:
    """How the trained `run` differs from the data set and settings asked for, or None."""
    from anomaly.runs import load_config

    config = load_config(run)
    if data is not None and os.path.realpath(config.data) != os.path.realpath(data):
        return f"it was trained on {config.data}"
    for name, value in overrides.items():
        if getattr(config, name, value) != value:
            return f"its {name} is {getattr(config, name)!r}, not {value!r}"
    return None


def _subplots(*args, **kwargs):
    """A figure pyplot does not keep: it shows once, when the notebook cell returns it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    plt.close(fig)
    return fig, axes


# --- the arguments the notebooks' figures and tables take ---


def _positive(name: str, value) -> int:
    """`value` when it is a whole number of at least 1; ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _named_runs(runs) -> dict[str, Path]:
    """The run folders a figure or table compares, as {name: folder}: a dict as the notebooks
    give it, one folder, or a list of folders (named by their folder names)."""
    if isinstance(runs, str | os.PathLike):
        runs = [runs]
    if isinstance(runs, list | tuple) and all(isinstance(r, str | os.PathLike) for r in runs):
        named = {Path(r).name: r for r in runs}
        if len(named) < len(runs):
            raise ValueError(
                "two runs share a folder name; name them: {'first': 'runs/a/pk', 'second': ...}"
            )
        runs = named
    if not isinstance(runs, dict) or not all(
        isinstance(k, str) and isinstance(v, str | os.PathLike) for k, v in runs.items()
    ):
        raise TypeError(
            "give the runs as {name: run folder}, e.g. {'patchknn': 'runs/pk'}, one run "
            f"folder, or a list of them; not {str(runs)[:80]}"
        )
    if not runs:
        raise ValueError("no runs given: name at least one run folder")
    return {k: Path(v) for k, v in runs.items()}
