"""The object a user holds: a backbone with its router, the diffusion, the timestep clusters and the
MTL balancer, rebuilt from one JSON-serialisable config (ARCHITECTURE.md, "The object a user holds").
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.diffusion import GaussianDiffusion
from zoo.registry import ROUTING_ALIASES, ModelName, UnknownModelError, backbone_spec, parse_name

CONFIG_VERSION = 1

#: overrides that configure the routing part (grammar `_dtr`, `_rand`)
ROUTING_OVERRIDES = {"beta", "alpha", "variant", "routing_seed"}
#: overrides that configure the diffusion process
DIFFUSION_OVERRIDES = {"schedule", "num_timesteps"}
#: other recognised overrides
OTHER_OVERRIDES = {"affinity", "mtl_options", "weighting_options", "vae", "data"}


def _arch_class(arch: str) -> type[nn.Module]:
    if arch == "dit":
        from models.dit import DiT

        return DiT
    if arch == "adm":
        from models.adm import ADMUNet

        return ADMUNet
    raise UnknownModelError(f"unknown backbone architecture {arch!r}; known: ['dit', 'adm']")


def _arch_arguments(arch: str) -> set[str]:
    params = inspect.signature(_arch_class(arch).__init__).parameters
    return {
        name
        for name in params
        if name not in ("self", "router") and params[name].kind != params[name].VAR_KEYWORD
    }


@dataclass
class LossOutput:
    """One training loss evaluation: what the balancer and the logs need."""

    total: torch.Tensor  # scalar: mean of the cluster losses (for logging; the balancer decides the update)
    cluster_losses: torch.Tensor  # (K,)
    per_sample: torch.Tensor  # (B,) after the per-sample weighting
    t: torch.Tensor  # (B,) timesteps used
    noise: torch.Tensor  # the noise used (to re-evaluate the same batch)
    mse: torch.Tensor  # (B,) raw eps-MSE, before weighting


def config_from_name(name: str | ModelName, **overrides: Any) -> dict[str, Any]:
    """The full config of a named recipe with overrides applied (no network is built)."""
    parsed = parse_name(name) if isinstance(name, str) else name
    overrides = {**parsed.overrides, **overrides}
    spec = backbone_spec(parsed.backbone)
    arch_args = _arch_arguments(spec["arch"])
    known = arch_args | ROUTING_OVERRIDES | DIFFUSION_OVERRIDES | OTHER_OVERRIDES | {"learn_sigma"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for {parsed.full_name!r}; valid: {sorted(known)}")
    backbone_kwargs = {**spec["kwargs"], **{k: v for k, v in overrides.items() if k in arch_args}}
    if "learn_sigma" in overrides:
        backbone_kwargs["learn_sigma"] = overrides["learn_sigma"]
    if spec["arch"] == "adm":  # guided-diffusion's UNet states learned sigma through its output width
        if "learn_sigma" in backbone_kwargs:
            sigma = bool(backbone_kwargs.pop("learn_sigma"))
            backbone_kwargs["out_channels"] = backbone_kwargs["in_channels"] * (2 if sigma else 1)
        learn_sigma = backbone_kwargs["out_channels"] == 2 * backbone_kwargs["in_channels"]
    else:
        learn_sigma = bool(backbone_kwargs.get("learn_sigma", True))
    diffusion = {
        "schedule": overrides.get("schedule", "linear"),
        "num_timesteps": int(overrides.get("num_timesteps", 1000)),
        "learn_sigma": learn_sigma,
    }
    routing = None
    if parsed.routing:
        routing = {"name": ROUTING_ALIASES.get(parsed.routing, parsed.routing)}
        for key in ("beta", "alpha", "variant"):
            if key in overrides:
                routing[key] = overrides[key]
        if "routing_seed" in overrides:
            routing["seed"] = overrides["routing_seed"]
    elif ROUTING_OVERRIDES & set(overrides):
        raise UnknownModelError(
            f"{sorted(ROUTING_OVERRIDES & set(overrides))} configure routing, but {parsed.full_name!r} has none "
            f"(add a routing part, e.g. {parsed.backbone}_dtr)"
        )
    clustering = {"k": parsed.k or 1, "objective": parsed.objective or "uniform"}
    mtl_cfg = {"name": parsed.balancer or "linear", **dict(overrides.get("mtl_options") or {})}
    weighting = None
    if parsed.weighting:
        weighting = {"name": parsed.weighting, **dict(overrides.get("weighting_options") or {})}
    return {
        "config_version": CONFIG_VERSION,
        "name": parsed.arch_name,
        "backbone": {"name": parsed.backbone, "arch": spec["arch"], "kwargs": backbone_kwargs},
        "routing": routing,
        "diffusion": diffusion,
        "clustering": clustering,
        "mtl": mtl_cfg,
        "weighting": weighting,
        "vae": overrides.get("vae"),
        "data": overrides.get("data"),
        "_affinity": overrides.get("affinity"),
    }


class DiffusionModel(nn.Module):
    """A diffusion model trained as a multi-task learner: `net`, `diffusion`, `clusters`, `balancer`.

    Build it with `zoo.create(name)`; `loss` drives training, `sample` draws images and
    `save_pretrained` writes the zoo weight layout (config.json, model.safetensors, README.md).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        import clustering
        import mtl
        import routing

        config = copy.deepcopy({k: v for k, v in config.items() if k != "_affinity"})
        backbone = config["backbone"]
        self.net = _arch_class(backbone["arch"])(**backbone["kwargs"])
        dcfg = config["diffusion"]
        self.diffusion = GaussianDiffusion(
            schedule=dcfg["schedule"], num_timesteps=dcfg["num_timesteps"], learn_sigma=dcfg["learn_sigma"]
        )
        num_timesteps = self.diffusion.num_timesteps
        if config.get("routing"):
            rcfg = dict(config["routing"])
            name = rcfg.pop("name")
            for key in ("channels", "num_blocks", "num_tasks"):
                rcfg.pop(key, None)
            channels = (
                self.net.router_channels()
                if hasattr(self.net, "router_channels")
                else backbone["kwargs"]["hidden_size"]
            )
            num_blocks = len(channels) if isinstance(channels, list) else backbone["kwargs"]["depth"]
            try:
                router = routing.build(
                    name, channels=channels, num_blocks=num_blocks, num_tasks=num_timesteps, **rcfg
                )
            except (ValueError, TypeError) as exc:
                raise ValueError(f"routing part {name!r} of {config['name']!r}: {exc}") from exc
            self.net.set_router(router)
            config["routing"] = router.config()
        ccfg = config["clustering"]
        try:
            if "intervals" in ccfg:
                self.clusters = clustering.TaskClusters.from_dict(ccfg)
            else:
                self.clusters = clustering.interval_clustering(
                    ccfg["k"],
                    ccfg["objective"],
                    snr=self.diffusion.snr,
                    num_timesteps=num_timesteps,
                )
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"clustering part (k={ccfg.get('k')}, objective={ccfg.get('objective')!r}): {exc}"
            ) from exc
        config["clustering"] = self.clusters.to_dict()
        mcfg = dict(config["mtl"])
        mname = mcfg.pop("name")
        mcfg.pop("k", None)
        try:
            self.balancer = mtl.build(mname, self.clusters.k, **mcfg)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"MTL part {mname!r}: {exc}") from exc
        config["mtl"] = {"name": mname, **_jsonable(self.balancer.config())}
        self.weighting = None
        if config.get("weighting"):
            wcfg = dict(config["weighting"])
            self.weighting = mtl.build_weighting(wcfg.pop("name"), **wcfg)
        self.config = config
        #: set by zoo.create: pretrained weights of another routing went in (see check_warm_start)
        self.warm_start_needed = False

    @classmethod
    def from_name(cls, name: str | ModelName, **overrides: Any) -> DiffusionModel:
        config = config_from_name(name, **overrides)
        affinity = config.pop("_affinity", None)
        if affinity is not None:
            config["clustering"] = _clusters_with_affinity(config, affinity)
        return cls(config)

    # ------------------------------------------------------------------ training

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0) or 0)

    def loss(
        self,
        x0: torch.Tensor,
        y: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Per-sample losses -> weighting -> cluster losses, with stratified timesteps (ARCHITECTURE.md)."""
        batch = x0.shape[0]
        if t is None:
            t = self.clusters.sample_timesteps(batch, generator=generator, device=x0.device)
        if noise is None:
            noise = (
                torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                if generator is not None
                else torch.randn_like(x0)
            )
        sample_cluster = self.clusters.cluster_of(t)
        # taken before the forward: under FSDP a forward swaps the root's parameters for unsharded views,
        # and one without grad (an evaluation) leaves them so; reshard first, so these are the DTensor shards
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from zoo.distributed import reshard

            reshard(self.net)
        self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        with self.balancer.capture(self.net, sample_cluster):
            terms = self.diffusion.training_losses(self.net, x0, t, y, noise=noise)
            per_sample = terms["loss"]
            if self.weighting is not None:
                per_sample = self.weighting(per_sample, t, self.diffusion.snr.to(x0.device), prediction="eps")
            cluster_losses = self.clusters.reduce(per_sample, t)
        return LossOutput(cluster_losses.mean(), cluster_losses, per_sample, t, noise, terms["mse"])

    def backward(self, out: LossOutput, scaler: Any = None) -> dict[str, Any]:
        """The balancer's update for one `loss` output: writes `.grad` of the net's trainable parameters."""
        params = getattr(self, "_trainable", None) or [p for p in self.net.parameters() if p.requires_grad]
        return self.balancer.backward(out.cluster_losses, params, scaler=scaler)

    # ------------------------------------------------------------------ sampling

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        kwargs = self.config["backbone"]["kwargs"]
        size = kwargs.get("input_size", kwargs.get("image_size"))
        return (int(kwargs["in_channels"]), int(size), int(size))

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | list[int] | None = None,
        num_samples: int | None = None,
        steps: int | str | None = 250,
        sampler: str = "ddpm",
        guidance: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        clip_denoised: bool | None = None,
        progress: bool = False,
        decode: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Draw samples (B, C, H, W); pixel models return [-1, 1] images, latent models decode with their VAE.

        `clip_denoised=None` clips predicted x0 to [-1, 1] for pixel models (as ADM samples) and not for
        latent models (as DiT samples).
        """
        device = next(self.net.parameters()).device
        if clip_denoised is None:
            clip_denoised = not self.config.get("vae")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
            if num_samples is not None and num_samples != labels.numel():
                raise ValueError(f"num_samples={num_samples} but {labels.numel()} labels were given")
            num_samples = labels.numel()
        elif self.num_classes > 0 and guidance == 1.0:
            labels = None  # the net draws the null class itself
        if num_samples is None or num_samples < 1:
            raise ValueError("give labels, or num_samples >= 1 for an unconditional draw")
        if labels is None and self.num_classes > 0:
            labels = torch.full((num_samples,), self.num_classes, dtype=torch.long, device=device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(0 if seed is None else int(seed))
        was_training = self.net.training
        self.net.eval()
        try:
            out = self.diffusion.sample(
                self.net,
                (num_samples, *self.sample_shape),
                y=labels,
                sampler=sampler,
                steps=steps,
                guidance=guidance,
                eta=eta,
                generator=generator,
                clip_denoised=clip_denoised,
                progress=progress,
                device=device,
                **kwargs,
            )
        finally:
            self.net.train(was_training)
        if decode and self.config.get("vae"):
            out = decode_latents(out, self.config["vae"])
        return out

    # ------------------------------------------------------------------ warm start

    def set_routing_strength(self, strength: float) -> None:
        """How far the routing masks close (0: all ones, the plain function; 1: the recipe's masks).

        Recorded in the config (`routing.strength`, only below 1), so a model saved mid warm-up rebuilds.
        """
        router = getattr(self.net, "router", None)
        if router is None:
            raise ValueError(f"{self.config['name']!r} has no routing: there is no mask strength to set")
        router.set_strength(strength)
        self.config["routing"] = router.config()

    def apply_routing_warmup(self, step: int, warmup_steps: int) -> float:
        """Set the mask strength of a warm start after `step` optimiser steps; returns it.

        Linear from all-ones masks at step 0 to exactly the recipe's masks at step `warmup_steps`
        (`routing.warmup_strength`); derived from the step alone, so a resumed run continues it.
        """
        import routing

        strength = routing.warmup_strength(step, warmup_steps)
        self.set_routing_strength(strength)
        return strength

    # ------------------------------------------------------------------ weights

    def save_pretrained(
        self,
        directory: str | Path,
        card: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write config.json, model.safetensors (the net's weights, e.g. EMA) and a README.md model card."""
        from zoo.hub import save_pretrained

        return save_pretrained(self, directory, card=card, state_dict=state_dict)

    def push_to_hub(self, repo_id: str, card: dict[str, Any] | None = None, **kwargs: Any) -> str:
        from zoo.hub import push_to_hub

        return push_to_hub(self, repo_id, card=card, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def extra_repr(self) -> str:
        return f"name={self.config['name']!r}, clusters={self.clusters.k}, balancer={self.config['mtl']['name']!r}"


WARM_START_HINT = (
    "finetune with a warm start: `zoo train {name} --pretrained ...` anneals the masks from all ones to the "
    "recipe's over --routing-warmup steps (default: half the run), starts the EMA at the end of that "
    "warm-up and the balancer at linear weighting; in your own loop call model.balancer.neutral_start() "
    "before the first step and model.apply_routing_warmup(step, N) after every step"
)


def _routing_key(routing_config: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if not routing_config else {k: v for k, v in routing_config.items() if k != "strength"}


def check_warm_start(model: DiffusionModel, source_routing: Any, source: str | None) -> bool:
    """Warn when weights trained with `source_routing` load into a model routed differently.

    `source_routing` is the source's router config, None for plain weights, or "unknown" (no warning).
    The masks change the function (the DTR window zeroes a fifth of every block's input), so such
    weights need a warm-start finetuning; sets and returns `model.warm_start_needed`.
    """
    target = _routing_key(model.config.get("routing"))
    needed = (
        target is not None
        and not (isinstance(source_routing, str) and source_routing == "unknown")
        and _routing_key(source_routing) != target
    )
    model.warm_start_needed = needed
    if needed:
        trained = "without routing" if not source_routing else f"with routing {_routing_key(source_routing)}"
        warnings.warn(
            f"{source}: these weights were trained {trained}; {model.config['name']!r} masks block inputs "
            f"with {target['name']!r} routing, which changes the function (its samples are not the source "
            f"model's until finetuned). " + WARM_START_HINT.format(name=model.config["name"]),
            stacklevel=3,
        )
    return needed


def _clusters_with_affinity(config: dict[str, Any], affinity: Any) -> dict[str, Any]:
    import clustering

    ccfg = config["clustering"]
    matrix = torch.as_tensor(affinity, dtype=torch.float64)
    clusters = clustering.interval_clustering(
        ccfg["k"], ccfg["objective"], affinity=matrix, num_timesteps=config["diffusion"]["num_timesteps"]
    )
    return clusters.to_dict()


def _jsonable(value: Any) -> Any:
    """Check a config is JSON-serialisable (config.json must rebuild the model)."""
    json.dumps(value)
    return value


def decode_latents(latents: torch.Tensor, vae_cfg: dict[str, Any]) -> torch.Tensor:
    """Decode VAE latents to [-1, 1] images with diffusers' AutoencoderKL (the optional `diffusers` extra)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise ImportError(
            "latent models decode with diffusers' AutoencoderKL: pip install 'dit-mtl-zoo[diffusers]'"
        ) from exc
    vae = AutoencoderKL.from_pretrained(vae_cfg["repo"], subfolder=vae_cfg.get("subfolder")).to(
        latents.device
    )
    scale = float(vae_cfg.get("scale", 0.18215))
    images = []
    for chunk in latents.split(16):
        images.append(vae.decode(chunk / scale).sample.clamp(-1, 1))
    return torch.cat(images)


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resize of a (1, N, C) square grid of position embeddings to `num_patches` tokens."""
    old = int(math.isqrt(pos_embed.shape[1]))
    new = int(math.isqrt(num_patches))
    if old * old != pos_embed.shape[1] or new * new != num_patches:
        raise ValueError("position embeddings can only be interpolated between square token grids")
    grid = pos_embed.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    warnings.warn(f"interpolated pos_embed from {old}x{old} to {new}x{new} tokens", stacklevel=2)
    return grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos_embed.dtype)
