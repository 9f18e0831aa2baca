"""The evaluator's new checks on real data: detector floors, planted identity copies, precision/recall sanity.

Three measurements, each on the shared CelebA (and anime) zips at 64 px, images taken
and cropped exactly as ``dist-gan eval --ref ZIP`` takes them (the first N in sorted order):

- **Detector floors** (``--floors N``): how many of N real faces each detector misses,
  how many of min(200, N) uniform-noise images it calls a face, and its seconds per 1000 images.
- **Planted identity copies** (``--identity N_REF``): a 64-px generator is trained briefly
  (``celeba64``, ``--kimg``), 950 of its samples are mixed with 50 training images that
  are mirrored, shifted 1-3 px and re-compressed (JPEG q75), and ``eval.identity`` matches
  all 1000 against the first N_REF training faces. Target: >= 48 of the 50 flagged (nearest
  training face under dlib's 0.6), and the other samples flagged at no more than the
  training faces' own leave-one-out rate.
- **Precision/recall sanity** (``--pr H``): the first H CelebA images against the next H
  (two disjoint halves: P and R should both be high), and one image repeated H times
  against the second half (recall should be ~0).

Writes ``results.json``, ``results.md``, ``identity_pairs.png`` and ``command.txt`` under ``--out``.

    python benchmarks/evaluator_checks.py --floors 1000 --identity 2000 --pr 2000
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as H  # noqa: E402
from dist_gan.eval import reference as R  # noqa: E402

DEFAULT_OUT = H.REPO / "benchmarks" / "results" / "evaluator"
HUMAN_DETECTORS = ("haar", "hog", "mmod", "mtcnn")


def load(data: str, n: int) -> np.ndarray:
    return R.load_images(R.open_reference(H.shared_zip(data)), n, 64)


def floors(n: int) -> List[Dict[str, Any]]:
    """Misses on n real faces and false faces on 200 noise images, per detector and data set."""
    from dist_gan.eval.detect import build_detector

    noise = np.random.default_rng(0).integers(0, 256, (min(200, n), 64, 64, 3), dtype=np.uint8)
    rows = []
    for data, names in (("celeba", HUMAN_DETECTORS), ("anime", ("anime", "mtcnn"))):
        real = load(data, n)
        for name in names:
            det = build_detector(name, str(H.ANIME_CASCADE) if name == "anime" else None)
            t0 = time.perf_counter()
            found = det.detect(real)
            per_1000 = (time.perf_counter() - t0) / n * 1000
            rows.append({"data": data, "detector": name, "n": n, "missed": int((~found).sum()),
                         "missed_pct": 100 * float((~found).mean()), "noise_faces": int(det.detect(noise).sum()), "noise_n": len(noise),
                         "s_per_1000": per_1000, "describe": det.describe(64)})
            print(f"floor {data} {name}: missed {rows[-1]['missed']}/{n}, noise {rows[-1]['noise_faces']}/200, "
                  f"{per_1000:.1f} s/1000", flush=True)
    return rows


def disguise(img: np.ndarray, shift: int) -> np.ndarray:
    """Mirrored, shifted ``shift`` px right (edge column repeated), re-compressed as JPEG q75."""
    out = np.ascontiguousarray(img[:, ::-1])
    out = np.concatenate([np.repeat(out[:, :1], shift, axis=1), out[:, :-shift]], axis=1)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def trained_generator(work: Path, kimg: float, limit: Optional[int] = None) -> Path:
    """A short celeba64 run at 64 px (reused when its command finished before)."""
    tag = f"-{limit}" if limit else ""
    shards = H.pack_once(H.shared_zip("celeba"), work / f"shards-celeba-64{tag}", crop="auto", limit=limit)
    run = work / f"celeba64-{kimg:g}k{tag}"
    cmd = H.train_cmd(H.train_args("celeba64", shards, run, 0, kimg, 1))
    stamp = run / "stamp.json"
    if not (stamp.is_file() and json.loads(stamp.read_text())["cmd"] == cmd):
        print(f"training {run.name}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(json.dumps({"cmd": cmd}))
    return run


def identity(n_ref: int, work: Path, kimg: float, out: Path, n_planted: int = 50, n_mixed: int = 1000,
             limit: Optional[int] = None) -> Dict[str, Any]:
    """The planted-copies check: ``n_planted`` disguised training faces among ``n_mixed`` images in all."""
    from dist_gan.engine.checkpoint import load_generator, resolve_checkpoint
    from dist_gan.eval.identity import SAME_PERSON, FaceEmbedder, identity_report
    from dist_gan.eval.leak import nearest_neighbours
    from dist_gan.eval.sampling import Dist, generate

    run = trained_generator(work, kimg, limit)
    G, cfg = load_generator(resolve_checkpoint(str(run)), ema=True)
    samples = generate(G, int(cfg["model"]["nz"]), n_mixed - n_planted, 0, 250, Dist())["images"]
    train = load("celeba", n_ref)
    rng = np.random.default_rng(0)
    sources = rng.choice(n_ref, n_planted, replace=False)
    planted_at = np.sort(rng.choice(n_mixed, n_planted, replace=False))
    mixed = np.empty((n_mixed, 64, 64, 3), np.uint8)
    rest = np.setdiff1d(np.arange(n_mixed), planted_at)
    mixed[rest] = samples
    mixed[planted_at] = [disguise(train[s], 1 + k % 3) for k, s in enumerate(sources)]
    emb = FaceEmbedder()
    t0 = time.perf_counter()
    gen_emb = emb.embed(mixed)
    per_1000 = (time.perf_counter() - t0) / n_mixed * 1000
    train_emb = emb.embed(train)
    t0 = time.perf_counter()
    r = identity_report(gen_emb, train_emb, mixed, train, out / "identity_pairs.png", k_pairs=10)
    match_s = time.perf_counter() - t0
    rest_faces = int((~np.isnan(gen_emb[rest]).any(axis=1)).sum())

    def flagged_by(report: Dict[str, Any]) -> Dict[str, Any]:
        flagged = set(report["gen_same_person_index"])
        n = sum(int(i) in flagged for i in rest)
        return {"threshold": report["threshold"], "planted_flagged": sum(int(i) in flagged for i in planted_at),
                "rest_flagged": n, "rest_flagged_rate": n / rest_faces if rest_faces else None,
                "heldout_rate": report["heldout_same_person_rate"], "p_value": report["p_value"], "verdict": report["verdict"]}

    calibrated, dlib = flagged_by(r), flagged_by(identity_report(gen_emb, train_emb, threshold=SAME_PERSON))
    # Of the copies, how many find the very image they were made from as their nearest training face.
    q, train_rows = gen_emb[planted_at], np.flatnonzero(~np.isnan(train_emb).any(axis=1))
    ok = ~np.isnan(q).any(axis=1)
    _, idx = nearest_neighbours(q[ok], train_emb[train_rows]) if ok.any() else (None, np.zeros(0, np.int64))
    planted_to_own = int((train_rows[idx] == sources[ok]).sum())
    return {"n_ref": n_ref, "kimg": kimg, "run": H.shown_path(run), "planted": n_planted, "calibrated": calibrated, "dlib": dlib,
            "planted_no_face": int(np.isnan(q).any(axis=1).sum()), "planted_nearest_is_source": planted_to_own,
            "rest": len(rest), "rest_faces": rest_faces, "train_no_face": r["train_no_face"], "gen_no_face": r["gen_no_face"],
            "embed_s_per_1000": per_1000, "match_s": match_s, "heldout_to_train": r["heldout_to_train"],
            "gen_to_train": r["gen_to_train"], "planted_index": planted_at.tolist(), "sources": sources.tolist()}


def precision_recall_sanity(half: int) -> Dict[str, Any]:
    """Two disjoint halves of CelebA, and one image repeated, in Inception features."""
    from dist_gan.eval.features import InceptionFeatures, extract, resolve_weights
    from dist_gan.eval.precision_recall import precision_recall

    model = InceptionFeatures(resolve_weights())
    t0 = time.perf_counter()
    feats = extract(model, load("celeba", 2 * half), batch=250)["feats"]
    feat_s = time.perf_counter() - t0
    a, b = feats[:half], feats[half:]
    t0 = time.perf_counter()
    halves = precision_recall(a, b)
    pr_s = time.perf_counter() - t0
    repeated = precision_recall(np.repeat(a[:1], half, axis=0), b)
    return {"half": half, "halves": {"precision": halves["precision"], "recall": halves["recall"]},
            "repeated": {"precision": repeated["precision"], "recall": repeated["recall"]},
            "features_s_per_1000": feat_s / (2 * half) * 1000, "pr_s": pr_s, "k": halves["k"]}


def render(res: Dict[str, Any]) -> str:
    lines = ["# The evaluator's checks on real data", "", f"Machine: {res['machine']}. Command: `command.txt`.", ""]
    if res.get("floors"):
        lines += ["## Detector floors (64 px, first N images of each zip as `dist-gan eval --ref ZIP` reads them)", ""]
        lines += H.md_table(("data", "detector", "real missed", "missed %", "noise called a face", "s / 1000 images"),
                            [(r["data"], r["detector"], f"{r['missed']} / {r['n']}", H.fmt(r["missed_pct"], ".1f"),
                              f"{r['noise_faces']} / {r['noise_n']}", H.fmt(r["s_per_1000"], ".1f")) for r in res["floors"]])
        lines.append("")
    if res.get("identity"):
        i = res["identity"]
        lines += ["## Planted identity copies", "",
                  f"{i['planted']} training images (mirrored, shifted 1-3 px, JPEG q75) among {i['rest']} samples of "
                  f"`celeba64` trained {i['kimg']:g} kimg, matched against the first {i['n_ref']} CelebA faces "
                  f"({i['train_no_face']} with no face found).", ""]
        c, d = i["calibrated"], i["dlib"]

        def both(fn) -> tuple:
            return fn(c), fn(d)

        lines += H.md_table(("", f"calibrated threshold ({c['threshold']:.3f}, the default)", "dlib's 0.6"), [
            ("planted copies flagged", *both(lambda t: f"{t['planted_flagged']} / {i['planted']}")),
            ("other samples flagged", *both(lambda t: f"{t['rest_flagged']} / {i['rest_faces']} with a face "
                                                      f"({H.fmt(100 * (t['rest_flagged_rate'] or 0), '.1f')}%)")),
            ("leave-one-out rate of the training faces (the baseline)", *both(lambda t: f"{H.fmt(100 * t['heldout_rate'], '.1f')}%")),
            (f"verdict on all {i['planted'] + i['rest']} (binomial against the baseline)",
             *both(lambda t: f"{t['verdict']} (p = {t['p_value']:.2g})")),
        ])
        lines += ["", *H.md_table(("", "value"), [
            ("planted copies whose nearest training face is their source image", f"{i['planted_nearest_is_source']} / {i['planted']}"),
            ("planted copies with no face found", i["planted_no_face"]),
            ("samples with no face found", i["gen_no_face"]),
            ("dlib detect + align + embed, s / 1000 images", H.fmt(i["embed_s_per_1000"], ".1f")),
        ])]
        lines += ["", "`identity_pairs.png`: the closest sample / training pairs (the planted copies first).", ""]
    if res.get("pr"):
        p = res["pr"]
        lines += ["## Precision and recall sanity (Inception pool3, k = 3)", ""]
        lines += H.md_table(("case", "precision", "recall"), [
            (f"CelebA images 1-{p['half']} against {p['half'] + 1}-{2 * p['half']}", H.fmt(p["halves"]["precision"], ".3f"),
             H.fmt(p["halves"]["recall"], ".3f")),
            (f"image 1 repeated {p['half']} times against {p['half'] + 1}-{2 * p['half']}",
             H.fmt(p["repeated"]["precision"], ".3f"), H.fmt(p["repeated"]["recall"], ".3f"))])
        lines += ["", f"Inception features: {p['features_s_per_1000']:.0f} s / 1000 images; precision and recall of "
                      f"{p['half']} against {p['half']}: {p['pr_s']:.1f} s.", ""]
    lines += res.get("notes", [])
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--floors", type=int, default=0, help="real images per detector floor (0 = skip)")
    p.add_argument("--identity", type=int, default=0, help="training faces for the planted-copies check (0 = skip)")
    p.add_argument("--kimg", type=float, default=20.0, help="training of the generator the planted copies hide among")
    p.add_argument("--planted", type=int, default=50, help="disguised training images among the samples")
    p.add_argument("--mixed", type=int, default=1000, help="images in all: samples plus planted copies")
    p.add_argument("--limit", type=int, default=None, help="train the generator on the first N images only (smoke runs)")
    p.add_argument("--pr", type=int, default=0, help="images per half for the precision/recall sanity (0 = skip)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "dist_gan_bench" / "evaluator")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--merge", action="store_true", help="keep the sections already in OUT/results.json")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    previous = a.out / "results.json"
    res: Dict[str, Any] = json.loads(previous.read_text()) if a.merge and previous.is_file() else {}
    res["machine"] = H.machine()
    commands = res.get("commands", {})
    here = "python benchmarks/evaluator_checks.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if a.floors:
        res["floors"], commands["floors"] = floors(a.floors), here
    if a.identity:
        res["identity"], commands["identity"] = identity(a.identity, a.work, a.kimg, a.out, a.planted, a.mixed, a.limit), here
    if a.pr:
        res["pr"], commands["pr"] = precision_recall_sanity(a.pr), here
    res["commands"] = commands
    H.write_tables(a.out, "results", res, render(res), sorted(set(commands.values())))
    print(render(res))
    return res


if __name__ == "__main__":
    main()
