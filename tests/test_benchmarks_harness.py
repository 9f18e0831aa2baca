"""benchmarks/harness.py: the pieces every study shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import harness as H


def test_a_shown_command_names_no_machine_path_and_runs_the_same_in_bash_from_the_repository():
    home_file, repo_file = Path.home() / ".cache" / "x.pt", H.REPO / "dist_gan" / "train.py"
    argv = [sys.executable, "-c", "import sys; print(repr(sys.argv[1:]))", f"data={home_file}", str(repo_file),
            "optim.g_betas=[0.0,0.99]", "two words"]
    shown = H.shown_command(argv)
    assert shown.startswith("python -c ") and str(Path.home()) not in shown and str(H.REPO) not in shown
    assert "data=~/.cache/x.pt dist_gan/train.py 'optim.g_betas=[0.0,0.99]' 'two words'" in shown
    out = subprocess.run(["bash", "-c", shown], cwd=H.REPO, capture_output=True, text=True, check=True).stdout
    got = eval(out)  # the words python received
    assert got[0] == f"data={home_file}" and (H.REPO / got[1]).resolve() == repo_file and got[2:] == argv[5:]
