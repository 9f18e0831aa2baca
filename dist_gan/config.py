"""Recipes: ``recipes/NAME.yaml`` + ``key=value`` overrides -> one typed, validated config.

The schema below is the single list of valid keys. OmegaConf's struct mode rejects
any other key, and this module turns that into an error that names the valid keys,
before any work starts (no half-built run directory, no worker processes).

The allowed values of a key are owned by the registry that acts on it (``LOSSES``,
``ARCHS``, precision modes ...): ``CHOICES`` only points at them, and a range check
a registry defines is called from here rather than restated.

A recipe may start from others: ``defaults: [bigbatch]`` merges those recipes
first (in order), then the recipe's own keys.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dist_gan.augment import check_p, check_translation, parse_policy
from dist_gan.engine.backends import BACKENDS, ZERO_STAGES
from dist_gan.engine.ema import probe_key
from dist_gan.engine.precision import ADAM_IMPLS, COMPILE_MODES, MODES as PRECISION_MODES
from dist_gan.engine.schedule import LR_DECAY_NETS, LR_SCALINGS
from dist_gan.engine.state import NAN_POLICIES
from dist_gan.errors import UserError
from dist_gan.losses import LOSSES, BEGANLoss
from dist_gan.models import ARCHS, D_NORMS, G_INITS, MBSTD_ARCHS, RESOLUTIONS
from dist_gan.models.fastconv import SWAP_WGRAD_MODES
from dist_gan.recipes import available_recipes, recipes_dir


@dataclass
class ModelCfg:
    arch: str = "dcgan"  # registry name in dist_gan.models.ARCHS
    resolution: int = 64  # 32, 64 or 128
    nz: int = 100  # latent size
    ngf: int = 64  # G's width (channels of its last hidden layer)
    ndf: int = 64  # D's width (channels of its first layer)
    spectral_norm: bool = False  # spectral normalisation on every D conv/linear
    d_norm: str = "batch"  # D's normalisation: batch (as the arch builds it) | layer | none (batch norms swapped out)
    g_init: str = "dcgan"  # dcgan: N(0, 0.02) | nearest: G's stride-2 transposed convs start as upsample + 3x3 conv (no checkerboard)
    mbstd_group: int = 0  # D's minibatch standard deviation, dcgan and stylegan2 (its recipes use 4): samples per group; 0 = off
    # stylegan2 only (ngf/ndf unused there): widths min(channel_base // res, channel_max) at each resolution
    channel_base: int = 16384
    channel_max: int = 512
    w_dim: int = 512  # size of w (z's size is model.nz)
    mapping_depth: int = 8  # layers of the mapping network z -> w, 2..8
    style_mixing_prob: float = 0.9  # share of training batches whose w switches to a second z's at a random layer


@dataclass
class LossCfg:
    name: str = "bce"  # registry name in dist_gan.losses.LOSSES
    real_label: float = 1.0  # one-sided label smoothing: 0.9 in celeba64 and anime64
    instance_noise: float = 0.0  # sigma of Gaussian noise added to D's inputs (real and fake)
    noise_anneal_kimg: float = 0.0  # >0: sigma falls linearly to 0 over this many kimg
    gp_weight: float = 10.0  # wgan_gp only
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * E||grad D(real)||^2 on any loss; 0 = off
    r1_every: int = 16  # lazy R1: paid on every r1_every-th D step, weighted by r1_every
    pl_weight: float = 0.0  # stylegan2 only: path-length penalty on G (StyleGAN2 uses 2); 0 = off
    pl_every: int = 4  # lazy path-length: paid on every pl_every-th G step, weighted by pl_every
    gamma: float = 0.5  # began only: diversity ratio E[L(G(z))] / E[L(x)] the k_t control aims at
    lambda_k: float = 0.001  # began only: learning rate of k_t (clipped to [0, 1])


@dataclass
class OptimCfg:
    g_lr: float = 2e-4  # G's Adam learning rate
    d_lr: float = 2e-4  # D's Adam learning rate (TTUR: D faster than G)
    g_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])  # G's Adam (beta1, beta2)
    d_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])  # D's Adam (beta1, beta2)
    d_steps: int = 1  # D:G schedule as d_steps:g_steps per cycle (1:1, 2:1, 4:3, 5:1 ...)
    g_steps: int = 1  # G steps per cycle (see d_steps)
    impl: str = "auto"  # adam implementation: auto | fused | foreach | plain
    lr_decay_kimg: List[float] = field(default_factory=list)  # [start, end]: learning rates fall linearly across this window (kimg); [] = constant
    lr_decay_to: float = 0.0  # fraction of g_lr/d_lr left at the end of the window (and after it)
    lr_decay_nets: str = "both"  # which learning rates decay: both | g | d
    lr_scaling: str = "none"  # both rates follow the global batch: none | sqrt | linear, as (train.batch / ref_batch) or its sqrt
    ref_batch: int = 64  # the global batch g_lr and d_lr were tuned at (for lr_scaling)
    warmup_kimg: float = 0.0  # both rates rise linearly from ~0 over the first this-many kimg; 0 = no warm-up


@dataclass
class TrainCfg:
    batch: int = 128  # global batch per optimizer step, split over ranks and accumulation rounds
    accum: int = 1  # gradient-accumulation rounds per step
    kimg: float = 60.0  # training length in thousands of real images shown to D
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: one loss scaler per network) | auto (bf16 where native, else fp16 on CUDA, else fp32)
    channels_last: bool = False  # NHWC networks and batches: faster convolutions with bf16/fp16 (oneDNN, cuDNN tensor cores)
    compile: str = ""  # torch.compile mode for G and D: "" (eager) | default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs; eager fallback if unavailable
    swap_wgrad: str = "auto"  # deep 4x4 convs' weight grads as one forward conv (models/fastconv.py): auto (on for CPU, eager) | always | never
    tf32: bool = True  # TF32 for fp32 matmuls/convolutions on Ampere+ GPUs (no effect elsewhere)
    diffaug: str = ""  # DiffAugment policy for D's inputs, e.g. "color,translation,cutout"
    diffaug_p: float = 1.0  # per-sample probability of each DiffAugment op group (ADA's p); 1 = the reference policy
    diffaug_translation: float = 0.125  # DiffAugment's largest shift as a fraction of the size (reference: 1/8)
    diffaug_until_kimg: float = 0.0  # DiffAugment only until this many kimg, then D sees plain images (fine detail late); 0 = the whole run
    ema_kimg: float = 10.0  # EMA half-life in kimg: independent of the batch size
    ema_rampup: float = 0.05  # half-life <= rampup * images seen, so early EMA is not stale; 0 = off
    ema_bn_recal: bool = False  # before each FID, grid and checkpoint, re-estimate G_ema's (and the probes') BatchNorm statistics for their own weights from 4096 latents; off = G's, copied
    ema_probes: List[float] = field(default_factory=list)  # extra half-lives (kimg) averaged beside G_ema, for eval only: one run scores several (dist-gan eval --ema-kimg)
    nan_policy: str = "stop"  # stop | rollback (reload the last checkpoint, up to 3 times)
    max_rollbacks: int = 3  # rollbacks before a NaN stops the run
    collective_timeout_s: float = 300.0  # a dead rank ends the job after this long, never a hang


@dataclass
class LoaderCfg:
    workers: int = 2  # decode processes per rank (0: in the training process)
    shuffle: int = 1000  # shuffle-buffer size in samples, per worker
    xflip: bool = False  # random horizontal flips of the reals
    chunk_batches: int = 500  # batches per rank between re-seedings of the resampled stream
    retries: int = 4  # a shard read that fails (refused, reset, truncated, HTTP 5xx) is retried this often, then skipped and counted
    timeout_s: float = 30.0  # seconds a remote read may stall before it counts as failed
    cache_dir: str = ""  # shards fetched from a URL are kept here and read from disk afterwards ("" = no cache)
    cache_gb: float = 50.0  # the cache's size bound; least recently used shards go first


@dataclass
class LogCfg:
    every: int = 20  # steps between metric flushes (the only host syncs in the loop)
    sample_kimg: float = 5.0  # sample grid cadence
    snapshot_kimg: float = 10.0  # checkpoint cadence
    keep: int = 3  # checkpoints kept
    tensorboard: bool = True  # TensorBoard logs in run_dir/tb
    progress: bool = True  # a live progress bar (plain log lines when stderr is not a terminal)
    fid_kimg: float = 0.0  # FID of G_ema against the training shards every this-many kimg (and at the end), best kept as checkpoints/best.pt; 0 = off
    fid_n: int = 2000  # generated samples per FID (as many training images as reference), split over the ranks


@dataclass
class Config:
    recipe: str = "dcgan64"  # a name in recipes/ or a path to a .yaml
    description: str = ""  # one line: what the recipe is for
    data: str = ""  # shard folder made by `dist-gan data pack`
    run_dir: str = "runs/default"  # checkpoints, samples, metrics.jsonl, TensorBoard logs
    seed: int = 0  # initial weights, latents and the data order
    resume: str = ""  # "" (fresh; refuses a run_dir with checkpoints) | auto | path to a ckpt
    backend: str = "ddp"  # ddp | deepspeed
    zero_stage: int = 0  # deepspeed only
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    loader: LoaderCfg = field(default_factory=LoaderCfg)
    log: LogCfg = field(default_factory=LogCfg)


CHOICES: Dict[str, Collection[Any]] = {
    "model.arch": ARCHS.keys(),  # live views: an arch or loss registered later is valid too
    "model.resolution": RESOLUTIONS,
    "model.d_norm": D_NORMS,
    "model.g_init": G_INITS,
    "loss.name": LOSSES.keys(),
    "train.precision": PRECISION_MODES,
    "train.compile": COMPILE_MODES,
    "train.nan_policy": NAN_POLICIES,
    "train.swap_wgrad": SWAP_WGRAD_MODES,
    "optim.impl": ADAM_IMPLS,
    "optim.lr_decay_nets": LR_DECAY_NETS,
    "optim.lr_scaling": LR_SCALINGS,
    "backend": BACKENDS,
    "zero_stage": ZERO_STAGES,
}


def key_help() -> Dict[str, str]:
    """Each dotted key's help: the comment on its line of the schema above (read from this file)."""
    out: Dict[str, str] = {}
    sections = {"ModelCfg": "model.", "LossCfg": "loss.", "OptimCfg": "optim.", "TrainCfg": "train.",
                "LoaderCfg": "loader.", "LogCfg": "log.", "Config": ""}
    prefix: Optional[str] = None
    for line in Path(__file__).read_text(encoding="utf-8").splitlines():
        if line.startswith("class "):
            prefix = sections.get(line[6:].split(":")[0].split("(")[0])
        elif line and not line.startswith((" ", "@")):
            prefix = None  # past the schema's classes
        elif prefix is not None and "#" in line and ":" in line.split("#", 1)[0]:
            name = line.strip().split(":")[0]
            if name.isidentifier():
                out[prefix + name] = line.split("#", 1)[1].strip()
    return out


def describe_recipe(name: str) -> List[Tuple[str, Any, str]]:
    """(key, resolved value, help) for every key of a recipe, in schema order."""
    cfg = load_config([f"recipe={name}"])
    helps = key_help()
    return [(k, OmegaConf.select(cfg, k), helps.get(k, "")) for k in valid_keys()]


def valid_keys(node: Any = None, prefix: str = "") -> List[str]:
    """Every dotted key the schema accepts, e.g. ``train.batch``."""
    node = OmegaConf.structured(Config) if node is None else node
    keys: List[str] = []
    for k, v in node.items():
        if isinstance(v, DictConfig):
            keys += valid_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def _unknown_key_error(key: str, where: str) -> UserError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown recipe key {key!r} ({where}).{hint}\nValid keys: {', '.join(keys)}")


def _check_keys(node: Any, where: str, prefix: str = "") -> None:
    """Reject keys the schema lacks, naming the offending dotted key."""
    schema_keys = set(valid_keys())
    flat: List[str] = []

    def walk(n: Any, p: str) -> None:
        for k, v in n.items():
            if isinstance(v, dict) and f"{p}{k}" not in schema_keys:
                walk(v, f"{p}{k}.")
            else:
                flat.append(f"{p}{k}")

    walk(node, prefix)
    for key in flat:
        if key not in schema_keys:
            raise _unknown_key_error(key, where)


def parse_overrides(args: Sequence[str]) -> Dict[str, str]:
    """``key=value`` strings (Hydra style, dotted keys) -> ordered dict; anything else is an error."""
    out: Dict[str, str] = {}
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            raise UserError(f"expected key=value, got {arg!r} (e.g. recipe=bigbatch train.batch=256)")
        key, value = arg.split("=", 1)
        out[key.strip().lstrip("+")] = value
    return out


def recipe_path(name: str, near: Optional[Path] = None) -> Path:
    """``NAME`` -> ``recipes/NAME.yaml`` (for a base: beside the recipe naming it first); a ``.yaml`` path as given
    (relative to that recipe's folder for a base)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        return path if path.is_absolute() or near is None else near.parent / path
    for folder in ([near.parent] if near is not None else []) + [recipes_dir()]:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    close = difflib.get_close_matches(name, available_recipes(), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UserError(f"unknown recipe {name!r}.{hint} Available: {', '.join(available_recipes())}")


def read_recipe(path: Path, _chain: Sequence[Path] = ()) -> Dict[str, Any]:
    """A recipe file as a plain dict, with the recipes in its ``defaults:`` list merged under it."""
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    if path.resolve() in _chain:
        raise UserError(f"recipe {path.name}: its defaults lead back to it ({' -> '.join(p.stem for p in _chain)})")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path.name} is not a mapping of keys to values")
    bases = raw.pop("defaults", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"recipe {path.name}: defaults must be a list of recipe names, got {bases!r}")
    _check_keys(raw, f"in recipe {path.name}")
    merged = OmegaConf.create()
    for base in bases:
        base_raw = read_recipe(recipe_path(base, near=path), (*_chain, path.resolve()))
        base_raw.pop("description", None)  # a description speaks for its own recipe only
        merged = OmegaConf.merge(merged, base_raw)
    return OmegaConf.to_container(OmegaConf.merge(merged, raw), resolve=True)  # type: ignore[return-value]


def load_config(args: Sequence[str] = (), recipe: Optional[str] = None) -> DictConfig:
    """Resolve ``recipe=NAME`` (default dcgan64) plus overrides into a validated config."""
    overrides = parse_overrides(args)
    name = overrides.pop("recipe", recipe or "dcgan64")
    path = recipe_path(name)
    raw = read_recipe(path)
    _check_keys({k: None for k in overrides}, "on the command line")
    schema = OmegaConf.structured(Config)
    for key, value in overrides.items():  # `train.diffaug=` means "off" (''), not null, for a string field
        if not value.strip() and isinstance(OmegaConf.select(schema, key, default=None), str):
            overrides[key] = "''"
    try:
        cfg = OmegaConf.merge(schema, raw, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    except ConfigKeyError as exc:  # belt and braces: struct mode found a key we missed
        raise _unknown_key_error(str(exc.key), "in the merged config") from None
    except OmegaConfBaseException as exc:
        what = str(getattr(exc, "msg", exc)).strip().splitlines()[0]  # OmegaConf appends its internals
        key = getattr(exc, "full_key", None)
        raise UserError(f"bad recipe value{f' for {key}' if key else ''}: {what}") from None
    cfg.recipe = Path(name).stem
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks OmegaConf's types cannot express: enumerations, ranges, divisibility, pairings."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not valid; choose one of {list(allowed)}")
    if cfg.train.batch <= 0 or cfg.train.accum <= 0:
        raise UserError("train.batch and train.accum must be positive")
    for key in ("train.kimg", "log.sample_kimg", "log.snapshot_kimg", "train.ema_kimg"):
        if not OmegaConf.select(cfg, key) > 0:
            raise UserError(f"{key} must be positive (kimg = thousands of images shown to D), got {OmegaConf.select(cfg, key)}")
    if cfg.log.every < 1 or cfg.log.keep < 0:
        raise UserError(f"log.every must be >= 1 and log.keep >= 0 (0 keeps every checkpoint), got {cfg.log.every} and {cfg.log.keep}")
    if cfg.log.fid_kimg < 0 or cfg.log.fid_n < 2:
        raise UserError(f"log.fid_kimg must be >= 0 (0 = no FID during training) and log.fid_n >= 2, "
                        f"got {cfg.log.fid_kimg} and {cfg.log.fid_n}")
    if cfg.loader.retries < 0 or not cfg.loader.timeout_s > 0 or not cfg.loader.cache_gb > 0:
        raise UserError(f"loader.retries must be >= 0, loader.timeout_s and loader.cache_gb positive, "
                        f"got {cfg.loader.retries}, {cfg.loader.timeout_s} and {cfg.loader.cache_gb}")
    if cfg.optim.d_steps <= 0 or cfg.optim.g_steps <= 0:
        raise UserError("optim.d_steps and optim.g_steps must be positive (e.g. 4 and 3 for a 4:3 schedule)")
    if not float(cfg.loss.r1_gamma) >= 0 or int(cfg.loss.r1_every) < 1:
        raise UserError(f"loss.r1_gamma must be >= 0 (0 = no R1) and loss.r1_every >= 1, "
                        f"got {cfg.loss.r1_gamma} and {cfg.loss.r1_every}")
    if not float(cfg.loss.pl_weight) >= 0 or int(cfg.loss.pl_every) < 1:
        raise UserError(f"loss.pl_weight must be >= 0 (0 = off) and loss.pl_every >= 1, "
                        f"got {cfg.loss.pl_weight} and {cfg.loss.pl_every}")
    if float(cfg.loss.pl_weight) > 0 and cfg.model.arch != "stylegan2":
        raise UserError(f"loss.pl_weight needs a generator with a mapping network (model.arch=stylegan2), "
                        f"not model.arch={cfg.model.arch}")
    if not 0.0 < cfg.loss.real_label <= 1.0:
        raise UserError(f"loss.real_label must be in (0, 1], got {cfg.loss.real_label}")
    for name in ("g_betas", "d_betas"):
        betas = cfg.optim[name]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise UserError(f"optim.{name} must be two numbers in [0, 1), got {list(betas)}")
    decay = list(cfg.optim.lr_decay_kimg)
    if decay and (len(decay) != 2 or not 0.0 <= decay[0] < decay[1]):
        raise UserError(f"optim.lr_decay_kimg must be [] (constant rates) or [start, end] with 0 <= start < end, got {decay}")
    if int(cfg.optim.ref_batch) < 1:
        raise UserError(f"optim.ref_batch must be a positive batch size (the batch the rates were tuned at), got {cfg.optim.ref_batch}")
    if float(cfg.optim.warmup_kimg) < 0:
        raise UserError(f"optim.warmup_kimg must be >= 0 (0 = no warm-up), got {cfg.optim.warmup_kimg}")
    if not 0.0 <= cfg.optim.lr_decay_to <= 1.0:
        raise UserError(f"optim.lr_decay_to must be in [0, 1] (a fraction of the recipe's rates), got {cfg.optim.lr_decay_to}")
    if not float(cfg.train.ema_rampup) >= 0:
        raise UserError(f"train.ema_rampup must be >= 0 (a fraction of the images seen; 0 = no ramp-up), got {cfg.train.ema_rampup}")
    probes = list(cfg.train.ema_probes)
    keys = [probe_key(h) for h in probes]  # as checkpoints name them: distinct there, not just as floats
    if any(h <= 0 for h in probes) or len(set(keys)) != len(keys) or probe_key(cfg.train.ema_kimg) in keys:
        raise UserError(f"train.ema_probes must be distinct positive half-lives in kimg other than "
                        f"train.ema_kimg={cfg.train.ema_kimg}, got {probes}")
    if (cfg.loss.name == "began") != (cfg.model.arch == "began"):
        raise UserError("loss.name=began and model.arch=began go together (BEGAN's D is an autoencoder)")
    if float(cfg.train.diffaug_until_kimg) < 0:
        raise UserError(f"train.diffaug_until_kimg must be >= 0 (0 = DiffAugment for the whole run), got {cfg.train.diffaug_until_kimg}")
    try:  # range checks the owning modules define, run with the key's name
        BEGANLoss.check_gamma(cfg.loss.gamma, "loss.gamma")
        check_p(cfg.train.diffaug_p, "train.diffaug_p")
        check_translation(cfg.train.diffaug_translation, "train.diffaug_translation")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    m = cfg.model
    if cfg.model.arch == "stylegan2" and not (2 <= m.mapping_depth <= 8 and m.channel_base > 0 and m.channel_max > 0
                                              and m.w_dim > 0 and 0.0 <= m.style_mixing_prob <= 1.0):
        raise UserError(f"stylegan2 needs model.mapping_depth in 2..8, positive channel_base, channel_max and w_dim, "
                        f"style_mixing_prob in [0, 1]; got {m.mapping_depth}, {m.channel_base}, "
                        f"{m.channel_max}, {m.w_dim} and {m.style_mixing_prob}")
    if m.mbstd_group < 0 or (m.mbstd_group and m.arch not in MBSTD_ARCHS):
        raise UserError(f"model.mbstd_group must be >= 0 (0 = off) and is read by {', '.join(MBSTD_ARCHS)} only; "
                        f"got {m.mbstd_group} with model.arch={m.arch}")
    try:
        parse_policy(cfg.train.diffaug)
    except ValueError as exc:
        raise UserError(f"train.diffaug: {exc}") from None


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    """Plain containers: what checkpoints store (the safe unpickler accepts them)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
