"""benchmarks/evaluator_checks.py at toy size: every section runs on the real zips and real weights, and its table is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_evaluator_checks_run_each_section_and_write_the_table(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "evaluator_checks.py"), "--floors", "8", "--identity", "24",
           "--kimg", "0.05", "--limit", "64", "--planted", "4", "--mixed", "10", "--pr", "12",
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["data"], r["detector"]) for r in res["floors"]} == {
        ("celeba", "haar"), ("celeba", "hog"), ("celeba", "mmod"), ("celeba", "mtcnn"), ("anime", "anime"), ("anime", "mtcnn")}
    assert all(r["n"] == 8 and r["noise_n"] == 8 and 0 <= r["missed"] <= 8 for r in res["floors"])
    i = res["identity"]
    assert i["planted"] == 4 and i["rest"] == 6 and len(set(i["planted_index"])) == 4
    c, d = i["calibrated"], i["dlib"]
    assert d["threshold"] == 0.6 and d["planted_flagged"] >= 3  # mirrored, shifted, re-compressed copies stay the same people
    assert c["threshold"] <= 0.6 and c["planted_flagged"] <= d["planted_flagged"] and c["rest_flagged"] <= d["rest_flagged"]
    p = res["pr"]
    assert p["half"] == 12 and 0 <= p["halves"]["recall"] <= 1 and p["repeated"]["recall"] <= 1 / 12 + 1e-9
    for name in ("results.md", "command.txt", "identity_pairs.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "Planted identity copies" in (tmp_path / "out" / "results.md").read_text()
