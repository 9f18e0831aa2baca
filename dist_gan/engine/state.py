"""The run's counters, as one object: what the loop advances and a checkpoint restores.

Everything here is a function of the images shown, so a resumed run continues from
exactly these values. ``best_fid``/``best_kimg`` hold the best FID measured during
training so far (``None`` until a run measures one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional

NAN_POLICIES = ("stop", "rollback")  # train.nan_policy: what a non-finite loss does


@dataclass
class RunState:
    nimg: int = 0  # real images shown to D
    iteration: int = 0  # optimizer iterations (a D and/or G phase each)
    data_step: int = 0  # batches drawn from the stream: the data position for exact resume
    rollbacks: int = 0  # NaN rollbacks taken so far (train.max_rollbacks bounds them)
    best_fid: Optional[float] = None
    best_kimg: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "RunState":
        """From a checkpoint; counters it predates keep their defaults."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
