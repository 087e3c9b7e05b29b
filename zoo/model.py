"""The object a user holds: a backbone with its router, the diffusion, the timestep clusters and the
MTL balancer, rebuilt from one JSON-serialisable config (ARCHITECTURE.md, "The object a user holds").
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # torch built without distributed support
    FSDPModule = None

from zoo import clustering, mtl, routing
from zoo.config import _clusters_with_affinity, arch_class, config_from_name
from zoo.diffusion import build_process, solvers_for
from zoo.layout import (
    MTL_WEIGHTS_NAME,
    download_folder,
    load_folder,
    load_safetensors,
    push_folder,
    read_config,
    save_folder,
    save_mtl_state,
)
from zoo.mtl.base import clip_grad_norm, grad_norm
from zoo.registry import ModelName
from zoo.validate import check_weights


@dataclass
class LossOutput:
    """One training loss evaluation: what `DiffusionModel.backward` and `after_step` and the logs need.

    It holds everything the backward of this evaluation needs (no state is left on the model or the
    balancer), so several evaluations can be in flight, e.g. micro-batches of gradient accumulation.
    """

    total: torch.Tensor  # scalar: mean of the cluster losses (for logging; the balancer decides the update)
    cluster_losses: torch.Tensor  # (K,)
    per_sample: torch.Tensor  # (B,) after the per-sample weighting
    t: torch.Tensor  # (B,) timesteps used
    noise: torch.Tensor  # the noise used (to re-evaluate the same batch)
    mse: torch.Tensor  # (B,) raw eps-MSE, before weighting
    params: list[torch.Tensor] = field(
        default_factory=list
    )  # the net's trainable parameters (the backward's)
    capture: Any = None  # what `balancer.capture(...)` returned around this forward
    x0: torch.Tensor | None = None  # the batch (references), to re-evaluate it after the step
    y: torch.Tensor | None = None


class DiffusionModel(nn.Module):
    """A diffusion model trained as a multi-task learner: `net`, `diffusion`, `clusters`, `balancer`.

    Build it with `zoo.create(name)`; `loss` drives training, `sample` draws images and
    `save_pretrained` writes the zoo weight layout (config.json, model.safetensors, README.md).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        config = copy.deepcopy({k: v for k, v in config.items() if k != "_affinity"})
        backbone = config["backbone"]
        self.net = arch_class(backbone["arch"])(**backbone["kwargs"])
        dcfg = config["diffusion"]
        self.diffusion = build_process(dcfg)  # the process slot: "ddpm" unless the config names another
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
                with _cpu_if_meta():  # routing tables are exact data, never deferred
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
        scfg = dict(config.get("timestep_sampler") or {"name": clustering.DEFAULT_SAMPLER})
        sname = scfg.pop("name", None)
        try:  # the timestep sampler slot (clustering/samplers.py): stratified unless the config names another
            self.timestep_sampler = clustering.build_sampler(sname, self.clusters, **scfg)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"timestep sampler {sname!r}: {exc}") from exc
        config.pop("timestep_sampler", None)  # the default is not written: configs without it are unchanged
        if sname != clustering.DEFAULT_SAMPLER:
            config["timestep_sampler"] = {"name": sname, **_jsonable(self.timestep_sampler.config())}
        mcfg = dict(config["mtl"])
        mname = mcfg.pop("name")
        mcfg.pop("k", None)
        try:
            with _cpu_if_meta():  # a few numbers of state, built for real under torch.device("meta")
                self.balancer = mtl.build(mname, self.clusters.k, **mcfg)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"MTL part {mname!r}: {exc}") from exc
        config["mtl"] = {"name": mname, **_jsonable(self.balancer.config())}
        self.weighting = None
        if config.get("weighting"):
            wcfg = dict(config["weighting"])
            with _cpu_if_meta():
                self.weighting = mtl.build_weighting(wcfg.pop("name"), **wcfg)
        self.config = config
        self.pretrained_cfg: dict[str, Any] = {}  # timm's habit; zoo.create fills it for tagged weights
        #: set by zoo.create: pretrained weights of another routing went in (see check_warm_start)
        self.warm_start_needed = False

    @classmethod
    def from_name(cls, name: str | ModelName, **overrides: Any) -> DiffusionModel:
        config = config_from_name(name, **overrides)
        affinity = config.pop("_affinity", None)
        if affinity is not None:
            config["clustering"] = _clusters_with_affinity(config, affinity)
        return cls(config)

    # ------------------------------------------------------------------ the network's forward

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any):
        """`model(x, t, y)` is the backbone's forward (timm / diffusers habit): eps (and variance) output."""
        return self.net(x, t, y, **kwargs)

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
        """Per-sample losses -> weighting -> cluster losses, with stratified timesteps (ARCHITECTURE.md).

        A given `t` is validated here, once (one device sync; drawn timesteps are valid by
        construction); the diffusion, the clusters, the backbone and its router then skip their own
        range checks.
        """
        batch = x0.shape[0]
        if t is None:
            t = self.timestep_sampler(batch, generator=generator, device=x0.device)
        else:
            self.diffusion._check_timesteps(t, batch)
        if noise is None:
            noise = (
                torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                if generator is not None
                else torch.randn_like(x0)
            )
        sample_cluster = self.clusters.cluster_of(t, check_timesteps=False)
        # Under FSDP (fully_shard) a forward swaps the root's parameters for unsharded views, and one
        # without grad (an evaluation) leaves them so: reshard first, so these are the DTensor shards.
        _reshard(self.net)
        params = [p for p in self.net.parameters() if p.requires_grad]
        capture = self.balancer.capture(self.net, sample_cluster)
        with capture:
            terms = self.diffusion.training_losses(
                self._prevalidated_net(), x0, t, y, noise=noise, generator=generator, check_timesteps=False
            )
            per_sample = terms["loss"]
            if self.weighting is not None:
                per_sample = self.weighting(
                    per_sample, t, self.diffusion.snr.to(x0.device), prediction=self.diffusion.prediction
                )
            cluster_losses = self.clusters.reduce(
                per_sample, t, self.timestep_sampler.allow_empty, check_timesteps=False
            )
        return LossOutput(
            cluster_losses.mean(),
            cluster_losses,
            per_sample,
            t,
            noise,
            terms["mse"],
            params=params,
            capture=capture,
            x0=x0,
            y=y,
        )

    def _prevalidated_net(self) -> Any:
        """The net, called without its own timestep range check where its forward offers one."""
        forward = type(self.net).forward  # looked up once per class: this runs on every training step
        takes = _TAKES_CHECK.get(forward)
        if takes is None:
            takes = _TAKES_CHECK[forward] = "check_timesteps" in inspect.signature(forward).parameters
        if takes:
            return _Prevalidated(self.net)
        return self.net

    def backward(self, out: LossOutput, scaler: Any = None, clip: bool = True) -> dict[str, Any]:
        """The balancer's update for one `loss` output: writes `.grad` of its trainable parameters.

        This is the one backward path (the trainer's too). `clip=True` applies the balancer's
        `max_grad_norm` (its recipe) to this output's gradient, as a loop with one backward per step
        wants; a loop that accumulates several outputs passes `clip=False` and calls
        `clip_grad_norm_` once on the sum (after `scaler.unscale_`), as the trainer does.
        """
        params = out.params or [p for p in self.net.parameters() if p.requires_grad]
        return self.balancer.backward(
            out.cluster_losses, params, scaler=scaler, capture=out.capture, clip=clip
        )

    def grad_params(self) -> list[torch.Tensor]:
        """Every parameter a backward writes: the net's trainable ones and the balancer's (UW's log-variances)."""
        net = [p for p in self.net.parameters() if p.requires_grad]
        return net + [p for p in self.balancer.parameters() if p.requires_grad]

    def clip_grad_norm_(self, max_norm: float | None = None) -> torch.Tensor:
        """Clip the total gradient norm of `grad_params()` to `max_norm`; returns the norm before clipping.

        `max_norm=None` only measures it. FSDP-sharded and ordinary gradients mix (the norm is the
        same on every process). Call it on unscaled gradients (after `scaler.unscale_`).
        """
        params = [p for p in self.grad_params() if p.grad is not None]
        if max_norm is None:
            return grad_norm(params)
        if not max_norm > 0:
            raise ValueError(f"max_norm must be None or > 0, got {max_norm!r}")
        return clip_grad_norm(params, max_norm)

    def after_step(self, out: LossOutput) -> dict[str, Any]:
        """After the optimiser step: balancers with `needs_after_step` (FAMO) compare with `out`'s batch.

        Re-evaluates `out`'s batch (same timesteps and noise) without grad, under the caller's autocast,
        and passes its cluster losses to `balancer.after_step`; returns its logs ({} for the others).
        """
        if not self.balancer.needs_after_step:
            return {}
        if out.x0 is None:
            raise ValueError(
                "after_step needs the LossOutput of `loss` (it carries the batch to re-evaluate)"
            )
        with torch.no_grad():
            again = self.loss(out.x0, out.y, t=out.t, noise=out.noise).cluster_losses
        _reshard(self.net)  # a forward without grad leaves FSDP's root unsharded
        with torch.autocast(out.x0.device.type, enabled=False):
            return self.balancer.after_step(again) or {}

    # ------------------------------------------------------------------ sampling

    @property
    def solvers(self) -> list[str]:
        """The solvers that fit this model's process (the first is the default of `sample`)."""
        return solvers_for(self.diffusion.process)

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
        sampler: str | None = None,
        guidance: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        clip_denoised: bool | None = None,
        progress: bool = False,
        decode: bool = True,
        return_info: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Draw samples (B, C, H, W); pixel models return [-1, 1] images, latent models decode with their VAE.

        `sampler` names the solver (`model.solvers` lists those of the model's process; default: its
        first, `ddpm` for the Gaussian diffusion); `solver=` is the same argument. Other keywords are the
        solver's own options (`grid="uniform"|"karras"` for `dpm++2m`).

        `clip_denoised=None` clips predicted x0 to [-1, 1] for pixel models (as ADM samples) and not for
        latent models (as DiT samples).

        `return_info=True` returns `(images, info)`, where info counts what the draw cost, measured by a
        hook on the net (not derived from the arguments):
        `{"solver", "steps", "options", "guidance", "net_calls", "nfe"}` with `net_calls` the forwards
        of the net and `nfe` the function evaluations per image: the rows the net saw divided by the
        number of images. A guided step is one forward on the doubled batch: 1 net call, 2 NFE per image.
        """
        solver = kwargs.pop("solver", None)
        if solver is not None and sampler is not None and solver != sampler:
            raise ValueError(f"solver={solver!r} and sampler={sampler!r} name the same argument; give one")
        sampler = solver or sampler or self.solvers[0]
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
        counts = {"net_calls": 0, "rows": 0}

        def count(module: nn.Module, args: tuple, call_kwargs: dict) -> None:
            counts["net_calls"] += 1
            x = args[0] if args else next(iter(call_kwargs.values()))
            counts["rows"] += int(x.shape[0])

        hook = self.net.register_forward_pre_hook(count, with_kwargs=True)
        self.net.eval()
        try:
            out = self.diffusion.sample(
                self._prevalidated_net(),  # the samplers' timesteps are valid by construction
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
            hook.remove()
            self.net.train(was_training)
        if decode and self.config.get("vae"):
            out = decode_latents(out, self.config["vae"])
        if not return_info:
            return out
        info = {
            "solver": sampler,
            "steps": steps,
            "options": dict(kwargs),
            "guidance": float(guidance),
            "net_calls": counts["net_calls"],
            "nfe": counts["rows"] // num_samples
            if counts["rows"] % num_samples == 0
            else counts["rows"] / num_samples,
        }
        return out, info

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
        """Write config.json, model.safetensors (the net's weights, e.g. EMA), mtl.safetensors (the state
        outside the net, when there is any: `mtl_state_dict()`) and a README.md model card."""
        out = save_folder(directory, self.config, state_dict or self.net.state_dict(), card=card)
        save_mtl_state(
            out, self.mtl_state_dict()
        )  # the balancer's too: from_pretrained restores the whole model
        return out

    def mtl_state_dict(self) -> dict[str, torch.Tensor]:
        """The state outside the net (`state_dict()` minus `net.*`): UW log-variances, FAMO logits and
        Adam moments, Nash / IMTL weights, a learned per-sample weighting; `mtl.safetensors` holds it."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("net.")}

    def load_mtl_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load `mtl_state_dict()` output; the keys must be exactly this model's (no silent partial loads)."""
        own = self.mtl_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{source}: balancer state does not fit {self.config['name']!r} "
                f"(balancer {self.config['mtl']['name']!r}): missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
                )
        if state:
            self.load_state_dict(state, strict=False)

    def _load_mtl_file(self, path: Path | None, source: str) -> None:
        """Load `mtl.safetensors` when the folder has one; a model with state but no file keeps its init."""
        if path is None or not path.is_file():
            return
        self.load_mtl_state_dict(load_safetensors(path), source=str(path))

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | Path,
        revision: str | None = None,
        strict: bool = True,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> DiffusionModel:
        """The model that `save_pretrained` / `push_to_hub` wrote, its whole state (the huggingface_hub habit).

        `repo_or_dir` is a folder (or `local-dir:PATH`) or a Hub repo id (or `hf-hub:org/name[@rev]`).
        Reads config.json, model.safetensors and, when present, mtl.safetensors (the balancer state).
        """
        spec = str(repo_or_dir)
        if spec.startswith("local-dir:"):
            folder = Path(spec[len("local-dir:") :]).expanduser()
        elif spec.startswith("hf-hub:") or not Path(spec).expanduser().is_dir():
            repo = spec[len("hf-hub:") :] if spec.startswith("hf-hub:") else spec
            repo, _, at = repo.partition("@")
            folder = download_folder(
                repo,
                revision=revision or at or None,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        else:
            folder = Path(spec).expanduser()
        return cls.from_folder(folder, strict=strict, source=spec)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        strict: bool = True,
        source: str | None = None,
        mtl_file: Path | None | bool = True,
    ) -> DiffusionModel:
        """The model of a zoo weights folder: config.json (validated), model.safetensors (checked against
        the sha256 the folder records) and mtl.safetensors when present (`mtl_file`: another path, or None
        for none)."""
        folder = Path(folder).expanduser()
        config = read_config(folder)
        state_dict = load_folder(folder, config)
        model = cls(config)
        model.load_net_state(state_dict, strict=strict, source=str(folder))
        model._load_mtl_file(folder / MTL_WEIGHTS_NAME if mtl_file is True else mtl_file, source=str(folder))
        model.pretrained_cfg = {
            "architecture": config.get("name"),
            "source": source or str(folder),
            "file": str(folder),
        }
        return model

    # ------------------------------------------------------------------ deferred initialisation

    def materialize(
        self, device: str | torch.device = "cpu", state_dict: dict[str, torch.Tensor] | None = None
    ) -> DiffusionModel:
        """Give a model built under `torch.device("meta")` real storage on `device`, then initialise it
        as a fresh model (the net's own initialisation) or load `state_dict` (the net's keys, or the
        whole `state_dict()` with `net.*` and balancer keys). The routing tables and the balancer, built
        for real at construction, move with their values. Returns self.
        """
        net = self.net
        router = getattr(net, "router", None)
        if router is not None:
            net.set_router(None)  # to_empty would drop the routing tables' values
        try:
            net.to_empty(device=device)
            if state_dict is not None:
                state = dict(state_dict)
                if any(k.startswith("net.") for k in state):
                    net_state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
                    self.load_mtl_state_dict({k: v for k, v in state.items() if not k.startswith("net.")})
                else:
                    net_state = state
                net.load_state_dict(net_state, strict=True)
            elif hasattr(net, "initialize_weights"):
                net.initialize_weights()
            else:  # no in-place initialiser: a fresh net of the same config, built on the device
                with torch.device(device):
                    fresh = arch_class(self.config["backbone"]["arch"])(**self.config["backbone"]["kwargs"])
                net.load_state_dict(fresh.state_dict(), strict=True)
        finally:
            if router is not None:
                net.set_router(router.to(device))
        for part in (self.balancer, self.weighting):
            if isinstance(part, nn.Module):
                part.to(device)
        return self

    def push_to_hub(
        self,
        repo_id: str,
        card: dict[str, Any] | None = None,
        private: bool = False,
        commit_message: str = "Upload model",
        token: str | None = None,
    ) -> str:
        """Save into a temporary folder (the `save_pretrained` layout, balancer state included) and upload it."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, card=card)
            return push_folder(tmp, repo_id, private=private, token=token, commit_message=commit_message)

    def load_net_state(
        self,
        state_dict: dict[str, torch.Tensor],
        strict: bool = True,
        source: str | None = None,
        interpolate: bool = False,
    ) -> None:
        """Load a backbone state dict, handling a different class count and position-embedding size.

        Weights that are not floating point where the model's are (int8, bool, ...) or hold NaN/inf are
        refused. The label table and the resizable entries are the backbone's own facts (zoo/models)."""
        net = self.net
        facts = type(net)
        own = net.state_dict()
        check_weights(state_dict, str(source), expected=own)
        state_dict = dict(state_dict)
        table = f"{facts.label_key}.weight"
        if table in state_dict and table in own and state_dict[table].shape != own[table].shape:
            warnings.warn(
                f"{source}: label table {tuple(state_dict[table].shape)} does not fit this model's "
                f"{tuple(own[table].shape)} (different num_classes): dropped, the new table (null class = last "
                "row) starts from its initialisation",
                stacklevel=3,
            )
            del state_dict[table]
        for key in facts.resizable_keys:
            if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
                if not interpolate:
                    raise ValueError(
                        f"{source}: position embedding {tuple(state_dict[key].shape)} does not fit "
                        f"{tuple(own[key].shape)}: the input or patch size differs; pass "
                        "interpolate_pos_embed=True to resize it"
                    )
                # fixed sin-cos embeddings: the model's own, recomputed for its grid, is exact
                del state_dict[key]
        for key, value in state_dict.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        allowed_missing = {table, *facts.resizable_keys}
        missing = [k for k in missing if k not in allowed_missing]
        if strict and (missing or unexpected):
            raise ValueError(
                f"{source}: state dict does not match the model: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def extra_repr(self) -> str:
        return f"name={self.config['name']!r}, clusters={self.clusters.k}, balancer={self.config['mtl']['name']!r}"


#: per forward function: whether it offers `check_timesteps` (inspect.signature costs tens of microseconds)
_TAKES_CHECK: dict[Any, bool] = {}


class _Prevalidated:
    """`net(x, t, y)` with `check_timesteps=False`: DiffusionModel validated the timesteps at its boundary."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.num_classes = getattr(net, "num_classes", None)  # classifier-free guidance reads it
        self.router = getattr(net, "router", None)  # a process feeding continuous time passes task=

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any):
        return self.net(x, t, y, check_timesteps=False, **kwargs)


def _reshard(net: nn.Module) -> None:
    """Under FSDP (fully_shard), put the parameters back to their DTensor shards (a no-op otherwise)."""
    if FSDPModule is not None and torch.distributed.is_initialized():
        for module in net.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


class _cpu_if_meta:
    """Build the small exact parts (routing tables, balancer state) on the CPU under `torch.device("meta")`."""

    def __enter__(self) -> None:
        self._ctx = torch.device("cpu") if torch.empty(()).device.type == "meta" else None
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


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
