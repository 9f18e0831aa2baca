"""What a run reports: metrics.jsonl, TensorBoard, a rich live line, loss- and FID-curve PNGs.

Only rank 0 reports. The loop hands over already-synced Python floats at log
intervals, so nothing here forces a device sync. The live bar moves every step
(``advance`` takes the image count the loop already has on the host), so its ETA
comes from the measured rate; where stderr is not a terminal (SLURM logs, pipes)
there is no bar but a plain line every ``plain_every_s`` seconds and at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

from rich.console import Console
from rich.progress import Progress, TextColumn

from dist_gan.imaging import pyplot
from dist_gan.progress import progress_bar


class Monitor:
    """Rank-0 reporter for one run directory."""

    def __init__(self, run_dir: Path, total_images: int, start_images: int, tensorboard: bool, progress: bool,
                 plain_every_s: float = 30.0) -> None:
        self.run_dir = run_dir
        self.total_images = total_images
        self.plain_every_s, self._plain_at = plain_every_s, time.perf_counter()
        self._last: Dict[str, float] = {}
        self._fid = ""  # "fid=last best=best" once a FID is measured
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency; stay alive if it was removed
                self.tb = None
        self.console = Console(stderr=True, soft_wrap=True)  # log lines stay greppable
        self.progress: Optional[Progress] = None
        if progress:
            self.progress = progress_bar(
                TextColumn("{task.fields[kimg]:>8.2f}/{task.fields[total_kimg]:.0f} kimg"),
                TextColumn("{task.fields[ips]:>7.0f} img/s"),
                TextColumn("{task.fields[losses]}"),
                console=self.console, count=False,
            )
            self.task = self.progress.add_task(
                "train", total=total_images, completed=start_images, kimg=start_images / 1000,
                total_kimg=total_images / 1000, ips=0.0, losses="",
            )
            self.progress.start()
        self.plain = progress and not self.console.is_terminal  # no bar to draw: periodic lines instead

    def advance(self, nimg: int) -> None:
        """Every step: move the bar (a host-side int, no sync)."""
        if self.progress is not None and not self.plain:
            self.progress.update(self.task, completed=nimg, kimg=nimg / 1000)

    def log(self, record: Dict[str, float]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "kimg", "time"):
                    self.tb.add_scalar(key, value, global_step=int(record["kimg"] * 1000))
        if self.progress is not None:
            losses = " ".join(f"{k}={record[k]:.3f}" for k in ("loss_d", "loss_g", "d_real", "d_fake") if k in record)
            losses += self._fid
            self.progress.update(
                self.task, completed=int(record["kimg"] * 1000), kimg=record["kimg"],
                ips=record.get("img_per_s", 0.0), losses=losses,
            )
        self._last = record
        if self.plain and time.perf_counter() - self._plain_at >= self.plain_every_s:
            self.plain_line()

    def plain_line(self) -> None:
        """kimg done/total, img/s, losses and the time left at the current rate, as one log line."""
        r = self._last
        if not r:
            return
        self._plain_at = time.perf_counter()
        ips = r.get("img_per_s", 0.0)
        left = (self.total_images - r["kimg"] * 1000) / ips if ips > 0 else float("nan")
        losses = " ".join(f"{k}={r[k]:.3f}" for k in ("loss_d", "loss_g", "d_real", "d_fake") if k in r)
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if left == left else "?"
        self.console.print(f"train {r['kimg']:.2f}/{self.total_images / 1000:g} kimg  {ips:.0f} img/s  {losses}{self._fid}  "
                           f"{eta} left", highlight=False)

    def show_fid(self, last: float, best: float) -> None:
        """The last and best FID, from now on in the live line and the plain lines."""
        self._fid = f"  fid={last:.1f} best={best:.1f}"

    def print(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message)
        else:
            self.console.print(message)

    def close(self) -> None:
        if self.plain:
            self.plain_line()  # the final figures, whatever the cadence
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()


def read_metrics(path: Path) -> List[Dict[str, float]]:
    """Records of a metrics.jsonl, skipping a torn last line from a killed run."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(metrics_path: Path, out_png: Path) -> Optional[Path]:
    """Loss and D(x)/D(G(z)) curves against kimg, as one PNG."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    if not records:
        return None
    plt = pyplot()
    kimg = [r["kimg"] for r in records]
    keys = set(records[-1])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in keys if k.startswith("loss_")):
        ax1.plot(kimg, [r.get(key, float("nan")) for r in records], label=key)
    ax1.set_xlabel("kimg"), ax1.set_ylabel("loss"), ax1.set_title("losses")
    # D's outputs for BCE-style losses; the loss's own diagnostics otherwise (WGAN distance, BEGAN k_t, M_global).
    side = [("d_real", "D(x)"), ("d_fake", "D(G(z))")] if "d_real" in keys else [
        (k, k) for k in ("wdist", "gp", "k_t", "m_global") if k in keys]
    for key, label in side:
        ax2.plot(kimg, [r.get(key, float("nan")) for r in records], label=label)
    if "d_real" in keys:
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("kimg"), ax2.set_title("discriminator outputs" if "d_real" in keys else "loss diagnostics")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_fid(metrics_path: Path, out_png: Path) -> Optional[Path]:
    """FID against kimg from the records that carry one, the best point marked, as one PNG."""
    points = [(r["kimg"], r["fid"]) for r in read_metrics(metrics_path) if "fid" in r] if metrics_path.exists() else []
    if not points:
        return None
    plt = pyplot()
    kimg, fid = zip(*points)
    best = min(points, key=lambda p: p[1])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kimg, fid, marker="o", ms=3)
    ax.scatter([best[0]], [best[1]], color="red", zorder=3, label=f"best {best[1]:.1f} at {best[0]:g} kimg")
    ax.set_xlabel("kimg"), ax.set_ylabel("FID (G_ema)"), ax.set_title("FID during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


class Throughput:
    """img/s between log points, measured after the host sync the log already needs."""

    def __init__(self, nimg: int) -> None:
        self.t, self.nimg = time.perf_counter(), nimg

    def tick(self, nimg: int) -> float:
        now = time.perf_counter()
        rate = (nimg - self.nimg) / max(now - self.t, 1e-9)
        self.t, self.nimg = now, nimg
        return rate
