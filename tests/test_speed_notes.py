"""benchmarks/speed_notes.py: the file README's speed numbers come from. It records every
command with its output and exit status, keeps the parts it did not rerun, and never replaces
a file that is not its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed_notes.py"


@pytest.fixture
def notes_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("speed_notes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def fake_parts(py, peers_py, data, photos, runs):
        say = lambda text: [sys.executable, "-c", f"print({text!r})"]
        out = {"race": ("a race", [say("| race | 1 |")]), "score": ("stages", [say("| s |")])}
        if peers_py:
            fail = [sys.executable, "-c", "import sys; sys.exit('no anomalib here')"]
            out["peers-cookies"] = ("peers", [fail])
        return out

    monkeypatch.setattr(module, "parts", fake_parts)
    return module


def test_every_command_and_its_output_is_recorded(notes_module, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # the scripts' own policy is recorded
    notes = tmp_path / "speed-notes.md"
    notes_module.main(["--notes", str(notes), "--peers-python", sys.executable])
    text = notes.read_text()
    assert text.startswith(notes_module.HEAD)
    assert "## race: a race" in text and "| race | 1 |" in text and "| s |" in text
    assert "exit 0; load average" in text and "Machine: " in text
    assert "OMP_WAIT_POLICY PASSIVE" in text
    # a failed command is recorded as failed, with its error, not as an empty table
    peers = text[text.index("## peers-cookies") :]
    assert "exit 1" in peers and "It failed" in peers and "no anomalib here" in peers


def test_a_rerun_of_some_parts_keeps_the_others(notes_module, tmp_path, monkeypatch):
    notes = tmp_path / "speed-notes.md"
    notes_module.main(["--notes", str(notes)])
    race = notes.read_text().split("## race")[1].split("## score")[0]
    monkeypatch.setattr(notes_module, "now", lambda: "2099-01-01 00:00 UTC")
    notes_module.main(["--notes", str(notes), "--parts", "score"])
    text = notes.read_text()
    assert text.split("## race")[1].split("## score")[0] == race  # kept as it was
    assert "2099-01-01" in text.split("## score")[1]  # rerun
    assert text.count("## race") == 1 and text.count("## score") == 1
    assert text.index("## race") < text.index("## score")  # in the parts' order


def test_a_file_that_is_not_ours_is_never_replaced(notes_module, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n")
    with pytest.raises(SystemExit, match="not a notes file"):
        notes_module.main(["--notes", str(readme)])
    assert readme.read_text() == "# My project\n"


def test_unknown_parts_are_refused_before_anything_runs(notes_module, tmp_path, capsys):
    notes = tmp_path / "speed-notes.md"
    with pytest.raises(SystemExit):
        notes_module.main(["--notes", str(notes), "--parts", "peers-cookies"])  # no peers Python
    assert "unknown or unavailable parts ['peers-cookies']" in capsys.readouterr().err
    assert not notes.exists()


def test_the_real_parts_name_scripts_settings_and_sets_that_exist():
    from anomaly.data.photos_sets import SETS

    spec = importlib.util.spec_from_file_location("speed_notes_real", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.parts("py", "peers-py", "data/cookies", "data/photos", "runs/x")
    assert list(table) == ["race", "race-448", "score", "sweep", "peers-cookies", "peers-photos"]
    assert set(module.PHOTO_SETS) == {s.name for s in SETS}
    settings = (SCRIPT.parent / "photos_sweep.py").read_text()
    for _, argvs in table.values():
        for argv in argvs:
            assert (SCRIPT.parents[1] / argv[1]).is_file(), argv
            for flag in ("--race", "--settings"):  # photos_sweep's setting names
                if flag in argv:
                    names = argv[argv.index(flag) + 1 :]
                    names = names[: next(i for i, a in enumerate(names) if a.startswith("--"))]
                    assert names
                    for name in names:
                        ivf = name.startswith("default-ort-ivf")  # made by a loop there
                        assert f'"{name}"' in settings or ivf, name


def test_a_part_that_breaks_the_recorder_loses_none_before_it(notes_module, tmp_path, monkeypatch):
    notes = tmp_path / "speed-notes.md"
    real = notes_module.run_part

    def stopped(name, *args):
        if name == "score":
            raise KeyboardInterrupt  # Ctrl-C during the second part
        return real(name, *args)

    monkeypatch.setattr(notes_module, "run_part", stopped)
    with pytest.raises(KeyboardInterrupt):
        notes_module.main(["--notes", str(notes)])
    assert "| race | 1 |" in notes.read_text()
