"""`explore` stops its Voila server on every signal that stops it, not on SIGTERM alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

DRIVER = textwrap.dedent(
    """
    import signal
    import sys
    import anomaly.explorer.runs
    from anomaly.explorer import server

    # explore leaves an ignored signal ignored (nohup means it); run under nohup or as a
    # background job, this driver would inherit that, so it starts from the defaults
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)

    folder = sys.argv[1]
    anomaly.explorer.runs.collect_runs = lambda runs: ({}, {})
    server.check_port_free = lambda port, host: None
    for i in range(int(sys.argv[2])):  # a fake Voila: writes its pid, then waits a minute
        child = [sys.executable, "-c", f"import os, time; open({folder!r} + '/{i}.tmp', 'w')"
                 f".write(str(os.getpid())); os.replace({folder!r} + '/{i}.tmp', {folder!r} + "
                 f"'/{i}'); time.sleep(60)", "--port=1", "--token=t"]
        server.voila_command = lambda *args, **kwargs: (child, {server.RUNS_ENV: "[]"})
        print("rc", server.serve(["RUN"], port=1), flush=True)
    """
)


def wait_for(path, proc, timeout=30):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"explore ended, rc {proc.returncode}, before {path}"
        assert time.monotonic() < end, f"no {path}"
        time.sleep(0.05)
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_hangup_and_interrupt_stop_the_server_as_sigterm_does(tmp_path):
    """SIGTERM was forwarded to the Voila child, but SIGHUP (the terminal closed) ended
    `explore` alone and left the server running, with nobody left to stop it."""
    sigs = [signal.SIGHUP, signal.SIGINT, signal.SIGTERM]
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), str(len(sigs))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children = []
    try:
        for i, sig in enumerate(sigs):
            children.append(wait_for(tmp_path / str(i), proc))
            proc.send_signal(sig)  # the server goes, and `explore` serves the next one
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        # each serve returns the shell's code of the signal that stopped it: 128 + its number
        codes = [line.split()[1] for line in out.splitlines() if line.startswith("rc ")]
        assert codes == [str(128 + sig) for sig in sigs], out
        time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)]
    finally:
        proc.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
