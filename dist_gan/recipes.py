"""Where the recipes are and what each is for, readable without importing torch.

The command line lists recipes in ``dist-gan train --help`` and ``dist-gan recipes``;
importing the schema (``dist_gan.config``, which pulls in the registries and torch)
for that would cost seconds of start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import yaml

from dist_gan.errors import UserError


def recipes_dir() -> Path:
    """Recipes ship inside the wheel (dist_gan/recipes) and live at the repo root in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "recipes", here.parent / "recipes"):
        if cand.is_dir():
            return cand
    raise UserError("recipes folder not found next to the dist_gan package")


def available_recipes() -> List[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def descriptions() -> Dict[str, str]:
    """Each shipped recipe's one-line ``description`` (plain YAML: omegaconf alone would add ~80 ms to every command)."""
    out = {}
    for name in available_recipes():
        data = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        out[name] = str(data.get("description", "")) if isinstance(data, dict) else ""
    return out
