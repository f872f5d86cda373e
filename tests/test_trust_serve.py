"""The explorer server, the threshold rules and the train-size curve on awkward inputs."""

from __future__ import annotations

import socket

import pytest

from anomaly.explorer import server


def test_port_in_use_is_refused_before_serving(tmp_path):
    """Voila moved quietly to the next port while the printed URL (with its token) named the
    busy one; serve now refuses a busy port by name and tells Voila never to move."""
    with socket.socket() as busy:
        busy.bind((server.LOCAL, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"--port {port}: .* already in use.*--port {port + 1}"):
            server.check_port_free(port)
    server.check_port_free(port)  # free again once the other listener has gone
    for bad in (0, 70000):
        with pytest.raises(ValueError, match="from 1 to 65535"):
            server.check_port_free(bad)
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.npz").write_bytes(b"")
    cmd, _ = server.voila_command(run, port=port)
    assert "--Voila.port_retries=0" in cmd
    assert f"--Voila.ip={server.LOCAL}" in cmd
