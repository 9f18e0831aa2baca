"""DDP (accelerate) and DeepSpeed (two engines) behind one small interface.

The step only ever asks a backend to ``backward`` a network's loss, ``step`` a
network and, for accumulation, whether to hold back the gradient all-reduce.
Checkpoints go through ``export_net`` / ``import_net`` in one plain format
(torch ``state_dict``s, Adam state per parameter index; ``engine.checkpoint`` lays
them out), so a run saved under one backend resumes under the other.

``deepspeed`` is an optional extra (``pip install 'dist-gan[deepspeed]'``), imported only by
``DeepSpeedBackend``.

DeepSpeed notes, learnt the hard way:
- one ``Accelerator`` refuses two DeepSpeed models, and accelerate's DeepSpeed
  path imports ``transformers`` and, on a CPU-only box, reports one process per
  rank. So accelerate only starts the processes here; G and D each get their own
  ``deepspeed.initialize`` engine over the already-initialised process group.
- D's parameters are frozen during G's step (and the raw module is called), or
  ZeRO-2 would reduce D's gradients a second time.
- Mixed precision is torch autocast inside fp32 engines (DeepSpeed's
  ``torch_autocast``), the same numerics as the DDP path. For fp16 DeepSpeed
  keeps a ``torch.amp.GradScaler`` per engine (tested with 0.19.8). Under ZeRO-1/2 each
  rank only sees its own gradient partition, so an overflow would make just one
  rank skip its step and halve its scale; ``SyncedGradScaler`` all-reduces the
  overflow flag so every rank skips together and the scales stay equal.
  DeepSpeed's own ``fp16`` mode (half weights, fp32 masters) is not used: it
  would make checkpoints backend-specific and it does not run on CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, ContextManager, Dict, Optional

import torch
from torch import nn

from dist_gan.engine.precision import Precision
from dist_gan.errors import UserError

NETS = ("G", "D")
BACKENDS = ("ddp", "deepspeed")
ZERO_STAGES = (0, 1, 2)  # DeepSpeed ZeRO: 0 plain data parallel, 1 partitions Adam's state, 2 also the gradients


class SyncedGradScaler(torch.amp.GradScaler):
    """A GradScaler whose found-inf flag is the max over all ranks.

    ZeRO hands the scaler only this rank's slice of the gradient; without the
    all-reduce, ranks would disagree about skipping a step and their loss scales
    (hence the scale of the gradients they average) would drift apart.
    """

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flag = sum(per_device.values()) if per_device else torch.zeros((), device=found_inf.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            per_device = {flag.device: flag} if not per_device else {d: flag.to(d) for d in per_device}
        return per_device

    def backoff(self) -> None:
        """What ``update()`` does after an overflow: scale x backoff factor, growth count reset.

        ZeRO-1/2 check the gradients for overflow themselves and skip the step before
        this scaler sees them; without this call the scale would never come down and a
        network whose first gradients overflow would never train.
        """
        if self._scale is not None:
            self._scale.mul_(self._backoff_factor)
            self._growth_tracker.zero_()


class DDPBackend:
    """accelerate's DDP: one ``prepare(G, D, opt_G, opt_D)``, a GradScaler per network."""

    name = "ddp"

    def __init__(self, accelerator, G: nn.Module, D: nn.Module, opt_G, opt_D, scaler_G, scaler_D) -> None:
        """Over networks and optimizers already passed through ``accelerator.prepare``."""
        self.accelerator = accelerator
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D
        self.G_raw, self.D_raw = _unwrap_ddp(G), _unwrap_ddp(D)
        self.D_penalty = D  # R1 / WGAN-GP take D's input gradient through the DDP wrapper
        self.scalers = {"G": scaler_G, "D": scaler_D}
        self.opts = {"G": opt_G, "D": opt_D}
        self.wrapped = {"G": G, "D": D}

    @classmethod
    def prepare(cls, accelerator, G: nn.Module, D: nn.Module, opt_G, opt_D, precision: Precision) -> "DDPBackend":
        """One ``prepare(G, D, opt_G, opt_D)`` and a fresh scaler per network."""
        G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
        return cls(accelerator, G, D, opt_G, opt_D, precision.make_scaler(), precision.make_scaler())

    def hold_sync(self, net: str, last_round: bool) -> ContextManager:
        """Skip the gradient all-reduce on all but the last accumulation round."""
        return contextlib.nullcontext() if last_round else self.accelerator.no_sync(self.wrapped[net])

    def backward(self, net: str, loss: torch.Tensor, accum: int, last_round: bool) -> None:
        self.accelerator.backward(self.scalers[net].scale(loss / accum))

    def step(self, net: str) -> None:
        scaler, opt = self.scalers[net], self.opts[net]
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def export_net(self, net: str) -> Dict[str, Any]:
        """``weights``, ``adam`` and ``scaler`` states of one network (``checkpoint.make_payload`` names them)."""
        return {"weights": self.raw(net).state_dict(), "adam": self.opts[net].state_dict(),
                "scaler": self.scalers[net].state_dict()}

    def import_net(self, net: str, saved: Dict[str, Any]) -> None:
        self.raw(net).load_state_dict(saved["weights"])
        _load_adam(self.opts[net], saved["adam"])
        if saved["scaler"]:
            self.scalers[net].load_state_dict(saved["scaler"])

    def raw(self, net: str) -> nn.Module:
        return self.G_raw if net == "G" else self.D_raw

    def loss_scales(self) -> Dict[str, Optional[float]]:
        """Each network's fp16 loss scale (None when nothing is scaled)."""
        return {net: (s.get_scale() if s.is_enabled() else None) for net, s in self.scalers.items()}

    def set_lr(self, net: str, lr: float) -> None:
        for group in self.opts[net].param_groups:
            group["lr"] = lr

    def close(self) -> None:
        """accelerate owns the process group."""


def _unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper. Not ``accelerator.unwrap_model``: that imports deepspeed when it is
    installed, and deepspeed announces its accelerator on import, on every DDP run."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _load_adam(opt, saved: Dict[str, Any]) -> None:
    """Load Adam state but keep this run's implementation flags (fused/foreach) and lr."""
    keep = [{k: g[k] for k in ("fused", "foreach", "lr") if k in g} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, flags in zip(opt.param_groups, keep):
        group.update(flags)


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(micro_batch: int, accum: int, zero_stage: int, precision: str) -> Dict[str, Any]:
    """The DeepSpeed config for one network's engine: fp32 weights, torch autocast for bf16/fp16."""
    cfg: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 by default; DDP does not, and nor do GAN recipes
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if precision in AUTOCAST_DTYPES:
        # No "lower-precision-safe" modules: gradients are reduced in fp32 as DDP does. DeepSpeed's
        # default reduces conv/linear gradients in bf16/fp16, which halves traffic but rounds them.
        cfg["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST_DTYPES[precision], "lower_precision_safe_modules": []}
    return cfg


class DeepSpeedBackend:
    """Two DeepSpeed engines (G and D) at ZeRO stage 0, 1 or 2, over accelerate's process group."""

    name = "deepspeed"

    def __init__(
        self, accelerator, G: nn.Module, D: nn.Module, opt_G, opt_D, precision: Precision,
        micro_batch: int, accum: int, zero_stage: int, initial_state: Optional[Dict[str, Dict[str, Any]]] = None,
    ) -> None:
        """``initial_state``: per network, the ``export_net`` states to start from (a resume)."""
        try:
            import deepspeed
        except ImportError:
            raise UserError("backend=deepspeed needs DeepSpeed: pip install 'dist-gan[deepspeed]' "
                            "(or pip install deepspeed)") from None
        self.accelerator, self.zero_stage = accelerator, zero_stage
        self._own_group = False
        if not torch.distributed.is_initialized():  # one process, no launcher: a 1-rank group
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", "0"),
                               ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
            deepspeed.init_distributed(auto_mpi_discovery=False)
            self._own_group = True
        if initial_state is not None:  # ZeRO copies the module's weights into its partitions at init
            G.load_state_dict(initial_state["G"]["weights"]), D.load_state_dict(initial_state["D"]["weights"])
        conf = deepspeed_config(micro_batch, accum, zero_stage, precision.mode)
        self.engines = {}
        for net, model, opt in (("G", G, opt_G), ("D", D, opt_D)):
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=dict(conf), dist_init_required=False)
            self.engines[net] = engine
        self.G, self.D = self.engines["G"], self.engines["D"]
        self.G_raw, self.D_raw = self.G.module, self.D.module
        # Penalties on D's input gradient (R1, WGAN-GP) call the raw module: an engine's forward hooks its output
        # so that any autograd pass through it, torch.autograd.grad w.r.t. the input included, runs the engine's
        # post-backward gradient reduction. The raw module's graph still reaches D's weights in engine.backward.
        self.D_penalty = self.D_raw
        self.scalers = {net: self._install_synced_scaler(net) for net in NETS}
        if initial_state is not None:
            for net in NETS:
                self._import_adam(net, initial_state[net]["adam"])
                self._import_scaler(net, initial_state[net]["scaler"])

    def _install_synced_scaler(self, net: str) -> Optional[torch.amp.GradScaler]:
        """Swap the engine's fp16 GradScaler (if any) for one that agrees across ranks."""
        engine = self.engines[net]
        owner, attr = ((engine.optimizer, "torch_autocast_gradscaler") if self.zero_stage > 0
                       else (engine, "torch_autocast_z0_gradscaler"))
        if getattr(owner, attr, None) is None:
            if engine.torch_autocast_enabled() and engine.torch_autocast_dtype() == torch.float16:
                import deepspeed

                raise UserError(f"backend=deepspeed with train.precision=fp16 needs a DeepSpeed whose torch_autocast "
                                f"keeps a loss scaler (0.19.8 does; this is {deepspeed.__version__}). Upgrade deepspeed, "
                                "or use train.precision=bf16, or backend=ddp.")
            return None  # fp32 or bf16: nothing is scaled
        scaler = SyncedGradScaler(getattr(owner, attr)._device)
        setattr(owner, attr, scaler)
        if self.zero_stage > 0:  # ZeRO's own overflow check returns early: back the scaler off there too
            zero, update_scale = engine.optimizer, engine.optimizer._update_scale

            def _update_scale(has_overflow: bool = False) -> None:
                update_scale(has_overflow)
                if has_overflow:
                    scaler.backoff()

            zero._update_scale = _update_scale
        return scaler

    def _import_scaler(self, net: str, saved: Optional[Dict[str, Any]]) -> None:
        if self.scalers[net] is not None and saved:  # a bf16/fp32 checkpoint has none: keep the fresh scale
            self.scalers[net].load_state_dict(saved)

    def hold_sync(self, net: str, last_round: bool) -> ContextManager:
        return contextlib.nullcontext()  # the engine accumulates over gradient_accumulation_steps itself

    def backward(self, net: str, loss: torch.Tensor, accum: int, last_round: bool) -> None:
        engine = self.engines[net]
        engine.backward(loss)  # the engine divides by gradient_accumulation_steps
        if not last_round:
            engine.step()  # not a boundary: DeepSpeed only counts the micro-step

    def step(self, net: str) -> None:
        self.engines[net].step()

    # -------------------------------------------------------- checkpoints
    def _base_optimizer(self, net: str):
        opt = self.engines[net].optimizer
        return getattr(opt, "optimizer", opt) if self.zero_stage > 0 else opt

    def _export_adam(self, net: str) -> Dict[str, Any]:
        """Adam state in torch's per-parameter format, gathered from the ZeRO partitions."""
        engine = self.engines[net]
        if self.zero_stage == 0:
            return engine.optimizer.state_dict()
        from deepspeed.utils import safe_get_full_optimizer_state

        base = self._base_optimizer(net)
        group = base.param_groups[0]
        steps = [s["step"] for s in base.state.values() if "step" in s]
        state: Dict[int, Dict[str, torch.Tensor]] = {}
        n = len(list(engine.module.parameters()))
        options = {k: v for k, v in group.items() if k != "params"}
        if not any(bool(torch.as_tensor(s).item()) for s in steps):  # Adam has not stepped yet (fp16 skips the
            return {"state": {}, "param_groups": [{**options, "params": list(range(n))}]}  # first overflowing steps)
        for idx, p in enumerate(engine.module.parameters()):
            exp_avg = safe_get_full_optimizer_state(p, "exp_avg")  # collective: every rank calls it
            exp_avg_sq = safe_get_full_optimizer_state(p, "exp_avg_sq")
            if exp_avg is not None:  # steps is non-empty here: the early return above
                state[idx] = {"step": torch.as_tensor(steps[0], dtype=torch.float32).clone().cpu(),
                              "exp_avg": exp_avg.detach().float().cpu(), "exp_avg_sq": exp_avg_sq.detach().float().cpu()}
        return {"state": state, "param_groups": [{**options, "params": list(range(n))}]}

    def _import_adam(self, net: str, saved: Dict[str, Any]) -> None:
        engine = self.engines[net]
        if self.zero_stage == 0:
            _load_adam(engine.optimizer, saved)
            return
        if not saved.get("state"):
            return  # a checkpoint from before the first step: nothing to restore
        from deepspeed.utils import safe_set_full_optimizer_state

        zero = engine.optimizer
        base = zero.optimizer
        step = next(iter(saved["state"].values()))["step"]
        for flat in zero.single_partition_of_fp32_groups:  # Adam's state is lazy: create it, then fill it
            base.state[flat] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(),
                                "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        zero._lazy_init_hp_params_optimizer_state()  # link each parameter to its fragment of that state
        for idx, p in enumerate(engine.module.parameters()):
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved["state"][idx][key].to(p.device), key)

    def export_net(self, net: str) -> Dict[str, Any]:
        """As ``DDPBackend.export_net``; collective under ZeRO (every rank gathers its Adam partitions)."""
        scaler = self.scalers[net]
        return {"weights": self.engines[net].module.state_dict(), "adam": self._export_adam(net),
                "scaler": scaler.state_dict() if scaler is not None else {}}

    def import_net(self, net: str, saved: Dict[str, Any]) -> None:
        """Mid-run restore (NaN rollback): weights into the module and the fp32 partitions, then Adam."""
        from deepspeed.utils import safe_set_full_fp32_param

        module = self.engines[net].module
        module.load_state_dict(saved["weights"])
        if self.zero_stage > 0:
            for p in module.parameters():
                safe_set_full_fp32_param(p, p.detach().clone())
        self._import_adam(net, saved["adam"])
        self._import_scaler(net, saved["scaler"])

    def loss_scales(self) -> Dict[str, Optional[float]]:
        """Each network's fp16 loss scale (None when nothing is scaled)."""
        return {net: (s.get_scale() if s is not None else None) for net, s in self.scalers.items()}

    def set_lr(self, net: str, lr: float) -> None:
        for group in self._base_optimizer(net).param_groups:
            group["lr"] = lr

    def close(self) -> None:
        if self._own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
