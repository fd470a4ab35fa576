"""The `protolabel` command: window by default, core commands passed through, and the headless selftest."""
from __future__ import annotations

import os
import subprocess
import sys

from desktop.app import main


def test_core_commands_pass_through(capsys):
    assert main(["backbones"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out


def test_help_names_the_window_and_the_selftest(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:  # argparse's help exits 0
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "open the window" in out and "--selftest" in out and "label" in out


def test_selftest_exits_zero_headless():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-m", "desktop.app", "--selftest"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest passed" in proc.stdout
