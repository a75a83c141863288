"""A replay piped into the real app in a real terminal (tmux): played, keys from /dev/tty, q quits.

`cat F | tcptop --replay /dev/stdin` died with a "not seekable" traceback; with stdin a
pipe, keys would also have been read from the recording. No root needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "data" / "sample.jsonl"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.mark.parametrize("how", ["cat {f} | {py} -m tcptop --replay -",
                                 "cat {f} | {py} -m tcptop --replay /dev/stdin",
                                 "{py} -m tcptop --replay <(cat {f})"])
def test_a_piped_replay_plays_and_quits_on_q(tmp_path, how):
    name = f"tcptop-pipe-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", name]
    status = tmp_path / "status"
    cmd = f"cd {ROOT} && {how.format(f=SAMPLE, py=sys.executable)}; echo $? > {status}; sleep 600"
    subprocess.run(tmux + ["new-session", "-d", "-s", name, "-x", "150", "-y", "40", "bash", "-c", cmd],
                   check=True)
    try:
        deadline = time.monotonic() + 20
        screen = ""
        while "nginx" not in screen:
            assert time.monotonic() < deadline, screen
            time.sleep(0.1)
            screen = subprocess.run(tmux + ["capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
        assert "replay " in screen and "Traceback" not in screen
        subprocess.run(tmux + ["send-keys", "-t", name, "q"], check=True)
        deadline = time.monotonic() + 15
        while not status.exists():
            assert time.monotonic() < deadline, "q did not quit"
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        Path(f"/tmp/tmux-{os.getuid()}/{name}").unlink(missing_ok=True)  # its socket file
