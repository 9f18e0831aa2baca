"""What a new user's first run gives: ``dist-gan quickstart`` timed end to end and scored by FID.

Each candidate is the README's command, ``dist-gan quickstart`` (draw the procedural faces,
pack them, train ``recipe=quickstart`` plus the candidate's overrides), run as a fresh
subprocess in its own folder and timed by the wall clock, drawing and packing included.
Its EMA generator is then scored with ``dist-gan eval --fid`` against the drawn faces it
trained on (``--n`` samples against as many drawn faces). Candidates run one after the
other, never side by side, so each has the whole machine.

Writes under ``--out`` (default ``benchmarks/results/quickstart``): ``results.json``,
``results.md``, ``command.txt`` and ``samples.png`` (drawn faces beside each candidate's
samples).

    python benchmarks/quickstart_quality.py                        # the shipped recipe alone
    python benchmarks/quickstart_quality.py --merge --candidate "bce=loss.name=bce"

Each row's ``reproduce`` is the command that reruns it alone; ``--merge`` adds rows to those
already in ``--out`` (a row of the same name is replaced), so a study can grow run by run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as H  # noqa: E402

DEFAULT_OUT = H.REPO / "benchmarks" / "results" / "quickstart"


def parse_candidate(text: str) -> Tuple[str, List[str]]:
    """``name=key=value key=value`` -> (name, overrides); a bare ``name`` has none."""
    name, _, rest = text.partition("=")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--candidate {text!r}: give NAME or NAME=key=value ...")
    return name, shlex.split(rest)


def run_candidate(name: str, overrides: Sequence[str], work: Path, n: int, n_images: int,
                  threads: Optional[int]) -> Dict[str, Any]:
    """Quickstart then eval, each a subprocess; the wall time of the first is the user's wait."""
    folder = work / name
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "dist_gan", "quickstart", "--out", str(folder), "--n-images", str(n_images),
           *overrides, "log.progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{name}: quickstart failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = folder / "run"
    last = H.last_metrics(run)
    eval_out = folder / "eval"
    ecmd = [sys.executable, "-m", "dist_gan", "eval", str(run), "--fid", "--ref", str(folder / "shards"),
            "-n", str(n), "--out", str(eval_out)]
    proc = subprocess.run(ecmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{name}: eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((eval_out / "report.json").read_text())
    reproduce = shlex.join(["python", "benchmarks/quickstart_quality.py", "--merge", "--candidate",
                            f"{name}={shlex.join(overrides)}" if overrides else name])
    return {"overrides": list(overrides), "reproduce": reproduce, "wall_s": wall, "kimg": last.get("kimg"), "img_per_s": last.get("img_per_s"),
            "fid": H.scores(report).get("fid"), "n": n, "command": H.shown_command(cmd[2:]), "run": H.shown_path(run)}


def drawn_floor(n: int, n_images: int) -> Dict[str, float]:
    """What a perfect generator would score, and what small flaws cost it.

    ``n`` faces the drawing program makes with seed 1, and ``n`` of the drawn set itself, each
    against the drawn set (seed 0, ``n_images`` faces). Then the same fresh faces with one flaw
    each, the kinds a short GAN run leaves: pixel noise, a period-2 checkerboard, a blur, and a
    half-resolution detour. Flat cartoons make Inception features very sensitive to texture;
    these rows say how far from the floor a generator lands for texture alone.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    from dist_gan.data.synthetic import draw_face
    from dist_gan.eval.features import InceptionFeatures, extract, resolve_weights
    from dist_gan.eval.fid import fid_from_features

    def faces(seed: int, count: int) -> np.ndarray:
        return np.stack([np.asarray(draw_face(np.random.default_rng([seed, i]), 64)) for i in range(count)])

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    model = InceptionFeatures(resolve_weights())
    drawn = extract(model, faces(0, n_images))["feats"]
    fresh_u8 = faces(1, n)
    fresh = fresh_u8.astype(np.float64)
    noise = np.random.default_rng(0).normal(size=fresh.shape)
    checker = (np.indices((64, 64)).sum(0) % 2 * 2 - 1)[None, :, :, None]
    flawed = {
        "noise_sigma4": to_u8(fresh + 4 * noise),
        "noise_sigma10": to_u8(fresh + 10 * noise),
        "checkerboard_6": to_u8(fresh + 6 * checker),
        "gaussian_blur_1px": np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1))) for x in fresh_u8]),
        "via_32px": np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BILINEAR).resize((64, 64), Image.BILINEAR))
                              for x in fresh_u8]),
    }
    out = {"fresh_vs_drawn": fid_from_features(extract(model, fresh_u8)["feats"], drawn),
           "drawn_subset_vs_drawn": fid_from_features(drawn[:n], drawn)}
    for name, images in flawed.items():
        out[f"fresh_{name}"] = fid_from_features(extract(model, images)["feats"], drawn)
    return out


def filtered_scores(folder: Path, n: int) -> Dict[str, float]:
    """FID of one quickstart's EMA samples, as drawn and after an image filter, against its drawn faces.

    Why: if the gap to the floor were the texture a short run leaves, an edge-preserving
    denoiser would close much of it. ``folder`` is a ``dist-gan quickstart --out`` folder.
    """
    import cv2
    import numpy as np

    from dist_gan.engine.checkpoint import load_generator
    from dist_gan.eval import reference as R
    from dist_gan.eval.features import InceptionFeatures, extract, resolve_weights
    from dist_gan.eval.fid import fid_from_features
    from dist_gan.eval.sampling import Dist, generate, reference_features

    G, cfg = load_generator(folder / "run")
    nz, res = int(cfg["model"]["nz"]), int(cfg["model"]["resolution"])
    images = generate(G, nz, n, seed=0, batch=250, dist=Dist())["images"]  # the evaluator's samples and latents
    model = InceptionFeatures(resolve_weights())
    drawn = reference_features(R.open_reference(folder / "shards"), None, n, res, model, 250, Dist(), None)["feats"]
    filters = {
        "as_drawn": lambda x: x,
        "bilateral_5px": lambda x: cv2.bilateralFilter(x, 5, 30, 5),
        "median_3px": lambda x: cv2.medianBlur(x, 3),
        "gaussian_0.7px": lambda x: cv2.GaussianBlur(x, (3, 3), 0.7),
    }
    return {name: fid_from_features(extract(model, np.stack([f(x) for x in images]))["feats"], drawn)
            for name, f in filters.items()}


def render(results: Dict[str, Any]) -> str:
    rows = [(name, " ".join(r["overrides"]) or "(recipe as shipped)", H.fmt(r["kimg"], ".1f"), H.fmt(r["wall_s"], ".0f"),
             H.fmt(r["img_per_s"], ".0f"), H.fmt(r["fid"], ".1f")) for name, r in results["candidates"].items()]
    lines = ["# The quickstart: time and FID of a new user's first run", "",
             f"`dist-gan quickstart` ({results['n_images']} drawn faces, recipe `quickstart` plus the overrides), "
             f"wall time from start to samples, drawing and packing included; FID of the EMA generator against the drawn "
             f"faces, n = {results['n']}. Machine: {results['machine']}.", ""]
    lines += H.md_table(("candidate", "overrides", "kimg", "wall s", "img/s (last log)", "FID"), rows)
    if results.get("floor"):
        f = results["floor"]
        lines += ["", f"Floor (`--floor`): {results['n']} newly drawn faces (seed 1) score FID {f['fresh_vs_drawn']:.1f} "
                      f"against the drawn set, {results['n']} of the drawn set itself {f['drawn_subset_vs_drawn']:.1f}."]
        flaws = [(k[len("fresh_"):], v) for k, v in f.items() if k.startswith("fresh_") and k != "fresh_vs_drawn"]
        if flaws:
            lines += ["", "The same fresh faces with one flaw each, against the drawn set (texture alone moves FID this far):", ""]
            lines += H.md_table(("flaw", "FID"), [(k, H.fmt(v, ".1f")) for k, v in flaws])
    if results.get("filters"):
        f = results["filters"]
        lines += ["", f"The `{f['candidate']}` run's samples filtered (`--filters`), against the drawn set:", ""]
        lines += H.md_table(("filter", "FID"), [(k, H.fmt(v, ".1f")) for k, v in f["fid"].items()])
    if results.get("notes"):  # the study's findings, kept in results.json so --merge keeps them
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def commands(results: Dict[str, Any]) -> List[str]:
    """Every command behind the tables: each row's, then the floor's and the filters' (kept by --merge, so listed too)."""
    lines = [r.get("reproduce", "") for r in results["candidates"].values()]
    if results.get("floor"):
        lines.append("python benchmarks/quickstart_quality.py --merge --floor --candidate shipped")
    if results.get("filters"):
        lines.append(f"python benchmarks/quickstart_quality.py --merge --work WORK --filters {results['filters']['candidate']}"
                     f"  # WORK: the --work folder that holds the {results['filters']['candidate']} row's run")
    return lines


def figure(results: Dict[str, Any], out: Path, panels_max: int = 4) -> None:
    """Drawn faces beside the shipped recipe's samples and those of the last other rows whose runs are still on disk."""
    runs = [(name, r) for name, r in results["candidates"].items() if (H.recorded_path(r["run"]) / "checkpoints").is_dir()]
    shipped = [(name, r) for name, r in runs if name == "shipped"]
    others = [(name, r) for name, r in runs if name != "shipped"]
    runs = shipped + others[-(panels_max - len(shipped)):]
    if not runs:
        return
    first = H.recorded_path(runs[0][1]["run"])
    panels = [("drawn faces", "what it trains on", H.real_grid(first.parent / "shards"))]
    panels += [(name, f"FID {H.fmt(r['fid'], '.0f')}, {H.fmt(r['wall_s'], '.0f')} s", H.sample_grid(H.recorded_path(r["run"])))
               for name, r in runs]
    H.compose_figure(panels, out / "samples.png", "dist-gan quickstart: drawn faces and EMA samples")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidate", action="append", default=[],
                   help='NAME or "NAME=key=value ...": overrides on recipe=quickstart (repeatable; default: shipped)')
    p.add_argument("--n", type=int, default=1000, help="samples for FID (and as many drawn faces)")
    p.add_argument("--n-images", type=int, default=2000, help="faces drawn (the quickstart's default)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the subprocesses (default: all)")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temp folder, kept)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--merge", action="store_true", help="keep the rows already in OUT/results.json")
    p.add_argument("--filters", metavar="CANDIDATE", default=None,
                   help="also score this candidate's samples (its run in --work) after image filters")
    p.add_argument("--floor", action="store_true", help="also score newly drawn faces, clean and with one flaw each, against the drawn set (~3 min)")
    a = p.parse_args(argv)
    if a.filters and a.work is None:  # before any run: the filtered run is looked for in --work
        raise SystemExit("--filters: give --work, the folder that holds the candidate's run")
    candidates = dict(parse_candidate(c) for c in (a.candidate or ([] if a.filters else ["shipped"])))
    work = a.work or Path(tempfile.mkdtemp(prefix="dg_quickstart_"))
    results: Dict[str, Any] = {"n": a.n, "n_images": a.n_images, "machine": H.machine(), "candidates": {}}
    previous = a.out / "results.json"
    if a.merge and previous.is_file():
        kept = json.loads(previous.read_text())
        if (kept["n"], kept["n_images"], kept["machine"]) != (a.n, a.n_images, results["machine"]):
            raise SystemExit(f"--merge: {previous} was measured with another --n, --n-images or machine")
        results["candidates"] = {k: v for k, v in kept["candidates"].items() if k not in candidates}
        results["notes"] = kept.get("notes", [])
        for key in ("floor", "filters"):
            if key in kept:
                results[key] = kept[key]
    if a.floor:
        results["floor"] = drawn_floor(a.n, a.n_images)
        print(f"floor: {results['floor']}", flush=True)
    for name, overrides in candidates.items():
        r = run_candidate(name, overrides, work, a.n, a.n_images, a.threads)
        results["candidates"][name] = r
        print(f"{name:16s} {r['wall_s']:6.0f} s  {r['kimg']:.1f} kimg  FID {r['fid']:.1f}", flush=True)
    if a.filters:
        fids = filtered_scores(work / a.filters, a.n)
        results["filters"] = {"candidate": a.filters, "fid": fids}
        print(f"filters ({a.filters}): {fids}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    figure(results, a.out)
    H.write_tables(a.out, "results", results, render(results), commands(results))
    print(f"wrote {a.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
