"""The explorer as a stand-alone page: Voila serves the committed notebooks/explorer_app.ipynb.

Safe by default: the server listens on 127.0.0.1 only, asks for a random token (in the URL it
prints), and shows no Python tracebacks on the page. Looking at it from another machine is
done through an SSH tunnel, not by opening the port (the printed message says how); `host=`
opens it to a network only when asked for by name. Kernels of closed or reloaded pages are
shut down after `cull_idle_s` seconds without a connection (Voila's own shutdown on page
unload is refused by its XSRF check), so a page left open all day costs one kernel, not one
per reload.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from anomaly.runs import RunDir
from anomaly.terminal import shell_word

RUNS_ENV = "ANOMALY_RUNS"  # run folders for the Voila page: a JSON list, or joined by os.pathsep
APP_ENV = "ANOMALY_EXPLORER_APP"  # another explorer notebook to serve, if set
APP_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explorer_app.ipynb"
LOCAL = "127.0.0.1"
MIN_CULL_S = 10


def runs_from_env(value: str | None = None) -> list[str]:
    """The run folders named in $ANOMALY_RUNS: a JSON list, or paths joined by os.pathsep."""
    value = os.environ.get(RUNS_ENV, "") if value is None else value
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        return [str(v) for v in json.loads(value)]
    return [v for v in value.split(os.pathsep) if v]


def app():
    """What the Voila page shows: the explorer of the runs in $ANOMALY_RUNS, or how to set it."""
    runs = runs_from_env()
    if not runs:  # plain HTML, not a widget: it reads the same in Voila and in a stored notebook
        from IPython.display import HTML

        return HTML(
            f"<p>No runs to explore: set <code>{RUNS_ENV}</code> to one or more run "
            "folders, or start the page with <code>python -m anomaly explore --run "
            "runs/NAME</code>.</p>"
        )
    from anomaly.explorer.widget import ThresholdExplorer

    try:
        return ThresholdExplorer(runs)
    except (ValueError, OSError) as err:  # the reason on the page, not Voila's "an error"
        import html

        from IPython.display import HTML

        return HTML(
            f"<p style='color:#c62828'>The explorer cannot show these runs: {html.escape(str(err))}</p>"
        )


def app_notebook() -> Path:
    """The notebook the page serves: $ANOMALY_EXPLORER_APP, else notebooks/explorer_app.ipynb
    of the repository, else (a package installed from a wheel has no notebooks/) the same page
    written to a temporary folder, removed when this process ends (`_written_app`)."""
    if os.environ.get(APP_ENV):
        nb = Path(os.environ[APP_ENV])
        if not nb.is_file():
            raise FileNotFoundError(
                f"{nb} is missing: {APP_ENV} names the notebook the explorer page serves; "
                f"unset it for the package's own, or point it at a copy of explorer_app.ipynb"
            )
        return nb
    return APP_NOTEBOOK if APP_NOTEBOOK.is_file() else _written_app()


def _written_app() -> Path:
    """explorer_app.ipynb's page (a title and `app()`) in a new temporary folder."""
    import atexit
    import shutil
    import tempfile

    import nbformat

    folder = Path(tempfile.mkdtemp(prefix="anomaly-explorer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Threshold explorer"),
        nbformat.v4.new_code_cell("from anomaly.explorer import app\n\napp()"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = folder / APP_NOTEBOOK.name
    nbformat.write(nb, path)
    return path


def check_port_free(port: int, host: str = LOCAL) -> None:
    """Refuse a port something already listens on. Voila would quietly move to another port,
    while the URL printed (with its token) points at whatever holds this one."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"--port {port}: a port is a number from 1 to 65535, such as 8866")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            raise OSError(
                f"--port {port}: {host}:{port} is already in use ({err.strerror}), perhaps by "
                "another explorer; stop that one, or pass another port: --port "
                f"{int(port) + 1}"
            ) from None


def voila_command(
    run_dirs,
    port: int = 8866,
    open_browser: bool = False,
    host: str = LOCAL,
    token: str | None = None,
    cull_idle_s: int = 600,
) -> tuple[list, dict]:
    """The command line and environment that serve the explorer page for these run folders.

    Args:
        run_dirs: scored run folders (or their predictions.npz).
        port: the port to listen on.
        host: the address to listen on; 127.0.0.1 (this machine only) unless asked otherwise.
        token: the access token the page asks for; None makes a random one, "" turns it off.
        cull_idle_s: shut down a page's kernel this many seconds after its last connection.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    folders = [Path(d).resolve() for d in run_dirs]
    if not folders:
        raise ValueError("explore needs at least one run folder (--run RUN)")
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(
                f"{folder} does not exist: pass a run folder made by `python -m anomaly train`"
            )
        if folder.is_file() and folder.suffix != ".npz":
            raise FileNotFoundError(
                f"{folder} is a file, not a run folder: pass a run folder made by `python -m "
                "anomaly train` (and scored)"
            )
        file = folder if folder.is_file() else folder / RunDir.PREDICTIONS  # x.npz, or a run
        if not file.exists():
            raise FileNotFoundError(
                f"{folder} has no {RunDir.PREDICTIONS}: score the run first with "
                f"`python -m anomaly score --run {shell_word(folder)}`"
            )
    if cull_idle_s < MIN_CULL_S:  # a page still loading has no connection yet
        raise ValueError(
            f"cull_idle_s must be >= {MIN_CULL_S} seconds (a shorter time can shut "
            f"down the kernel of a page that is still loading), got {cull_idle_s}"
        )
    token = secrets.token_urlsafe(24) if token is None else token
    env = os.environ.copy()
    env[RUNS_ENV] = json.dumps([str(f) for f in folders])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH")] if p)
    cmd = [
        sys.executable,
        "-m",
        "voila",
        str(app_notebook()),
        f"--port={port}",
        f"--Voila.ip={host}",
        "--Voila.port_retries=0",  # never move quietly to a port the printed URL does not name
        "--show_tracebacks=False",
        f"--token={token}",
        f"--MappingKernelManager.cull_idle_timeout={int(cull_idle_s)}",
        f"--MappingKernelManager.cull_interval={max(1, min(60, int(cull_idle_s) // 2))}",
        "--MappingKernelManager.cull_connected=False",
    ]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd, env


def page_url(cmd: list, host: str = LOCAL) -> str:
    """The URL of the page a `voila_command` serves, with its token."""
    port = next(a.split("=", 1)[1] for a in cmd if a.startswith("--port="))
    token = next(a.split("=", 1)[1] for a in cmd if a.startswith("--token="))
    shown = LOCAL if host in (LOCAL, "localhost") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def how_to_share(port: int, host: str = LOCAL) -> str:
    """What the explore command prints after the URL: who can open it, and how to share it."""
    if host in (LOCAL, "localhost", "::1"):
        return (
            f"Only this machine can open it. To look from another computer, tunnel the "
            f"port over SSH there: `ssh -N -L {port}:127.0.0.1:{port} USER@THIS_HOST`, then "
            "open the same URL in that computer's browser. Anyone with the URL (its token) "
            "can move and save thresholds; do not paste it in public."
        )
    return (
        f"WARNING: listening on {host}: every machine that can reach this address and has "
        "the token can open the page and save thresholds into the run folders. Prefer the "
        "default (127.0.0.1) with an SSH tunnel."
    )


def serve(
    run_dirs,
    port: int = 8866,
    open_browser: bool = False,
    block: bool = True,
    host: str = LOCAL,
    cull_idle_s: int = 600,
):
    """Serve the explorer of these run folders as a stand-alone page with Voila.

    Blocks until the server stops and returns its exit code; Ctrl+C, SIGTERM and SIGHUP (the
    terminal closed) stop the server too, and return 128 + the signal's number (130 for Ctrl+C),
    as a shell reports a command a signal stopped. With block=False returns the running
    `subprocess.Popen` (stop it with `.terminate()`).
    """
    cmd, env = voila_command(run_dirs, port, open_browser, host=host, cull_idle_s=cull_idle_s)
    check_port_free(port, host)
    from anomaly.explorer.runs import collect_runs, prepare

    # the page would show only an error for runs it cannot read, compare or draw: refused here
    preds, dirs = collect_runs(json.loads(env[RUNS_ENV]))
    for name, pred in preds.items():
        prepare(name, pred, dirs[name])
    url = f"Threshold explorer: {page_url(cmd, host)}  (Ctrl+C to stop)\n{how_to_share(port, host)}"
    proc = subprocess.Popen(cmd, env=env)
    if not block:
        print(url, flush=True)
        return proc
    with _stop_signals_raise():
        try:
            # the URL once the server answers: printed at once, it led to "connection refused"
            # for the seconds Voila takes to start
            where = f"[{host}]" if ":" in host else host or LOCAL  # an IPv6 address: bracketed
            print(f"Threshold explorer: starting on {where}:{port} ...", flush=True)
            if _listening(proc, host, port):
                print(url, flush=True)
            return proc.wait()
        except (KeyboardInterrupt, _Stop) as stopped:  # stop the server too, not orphan it
            # the shell's code for a command a signal stopped: 128 + its number (Ctrl+C: 130)
            code = 128 + (stopped.signum if isinstance(stopped, _Stop) else 2)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, _Stop):  # or asked twice
                proc.kill()
                proc.wait()
            return code


def _listening(proc, host: str, port: int, timeout_s: float = 120.0, poll_s: float = 0.1) -> bool:
    """Wait until something accepts connections on host:port (True), or `proc` ended (False:
    it says why itself). After `timeout_s` True anyway: a slow start still gets its URL."""
    import time

    target = "::1" if host == "::" else host if host not in ("", "0.0.0.0") else "127.0.0.1"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((target, int(port)), timeout=poll_s).close()
            return True
        except OSError:
            time.sleep(poll_s)
    return proc.poll() is None


class _Stop(Exception):
    """SIGTERM or SIGHUP (the terminal closed) while the server runs: stop it as Ctrl+C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


@contextlib.contextmanager
def _stop_signals_raise():
    """While inside, SIGTERM, SIGHUP and SIGINT raise in the main thread, so that `serve` stops
    its server instead of leaving it running without us. A signal already ignored (`nohup`)
    stays ignored; outside the main thread no handler can be set, and nothing changes."""
    import signal
    import threading

    def stop(signum, _frame):
        raise _Stop(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            signum = getattr(signal, name, None)  # Windows has no SIGHUP
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(
                    signum, stop if signum != signal.SIGINT else signal.default_int_handler
                )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
