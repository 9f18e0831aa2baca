"""Entry point: ``accelerate launch dist_gan/train.py recipe=bigbatch [key=value ...]``.

Also runs as ``python dist_gan/train.py ...`` (one process) and ``dist-gan train ...``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__":
    # Run as a script, Python puts dist_gan/ itself first on sys.path, where our
    # sub-packages (data, models, eval, ...) would shadow real top-level modules.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))


# Below the sys.path fix above: as a script, ``dist_gan`` is importable only after it.
from dist_gan.config import load_config  # noqa: E402
from dist_gan.engine.loop import train  # noqa: E402
from dist_gan.errors import UserError  # noqa: E402
from dist_gan.eval.tracking import tracker_for  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Parse ``recipe=... key=value`` arguments, then train (FID tracked per ``log.fid_kimg``); returns the run directory."""
    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    return train(cfg, fid=tracker_for(cfg))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every file is written and fsynced and the process group is gone; skip the
        # interpreter's C++ teardown, where a gloo worker thread occasionally aborts the
        # process ("terminate called without an active exception") after a good run.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
