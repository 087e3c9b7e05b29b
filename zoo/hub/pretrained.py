"""The built-in weight configs, plain data (a leaf: imports nothing of the project). Each `arch.tag` says where its weights live, their
licence, how they were trained and what they score, with the protocol of every number.

Numbers marked `measured_here: False` are the authors' own, quoted from the papers.

Every external weight states the noise schedule it was trained and evaluated with (`overrides["schedule"]`),
read from its authors' released code (tests/test_zoo.py::test_external_weights_use_their_schedule):
- original DiT (facebookresearch/DiT): `create_diffusion(noise_schedule="linear")` is the default that
  train.py and sample.py use -> linear;
- ANT (gohyojun15/ANT_diffusion): its diffusion/__init__.py changed that default to
  `noise_schedule="squaredcos_cap_v2"` (improved DDPM's cosine), and train_uw_multi_gpu.py,
  train_ant_single_gpu.py and sample_ddp.py all call `create_diffusion(...)` without the argument (the comment
  beside the training call still says "linear") -> cosine;
- ADM (openai/guided-diffusion README flags): 64x64 `--noise_schedule cosine`, 256x256 unconditional
  `--noise_schedule linear`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of pretrained weights for `arch.tag` (like timm's pretrained cfgs): plain data, no code."""

    arch: str  # grammar name without tag, e.g. "dit_xl" or "dit_t_dtr_uw_k5"
    tag: str
    format: str = "zoo"  # zoo | diffusers | dit_original | ant | dtr | adm | sit
    hf_hub_id: str | None = None
    hf_filename: str | None = None
    hf_subfolder: str | None = None
    hf_revision: str | None = None
    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    license: str = "unknown"
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture settings of these weights
    recipe: dict[str, Any] = field(default_factory=dict)  # how they were trained
    evaluation: dict[str, Any] = field(default_factory=dict)  # protocol of the results
    results: dict[str, Any] = field(default_factory=dict)  # e.g. {"fid": 5.695, "measured_here": False}
    vae: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def has_weights(self) -> bool:
        return bool(self.hf_hub_id or self.url or self.file)


#: the built-in weight configs, in order (the first tag of an arch is its default)
PRETRAINED: list[PretrainedCfg] = []

SD_VAE = {"repo": "stabilityai/sd-vae-ft-ema", "scale": 0.18215}
CC_BY_NC = "cc-by-nc-4.0"

# The original DiT-XL/2 weights (Peebles & Xie). CC BY-NC 4.0: loaded from their hosts, never vendored here.
for _size in (256, 512):
    PRETRAINED.append(
        PretrainedCfg(
            arch="dit_xl",
            tag=f"in1k_{_size}",
            format="diffusers",
            hf_hub_id=f"facebook/DiT-XL-2-{_size}",
            hf_subfolder="transformer",
            hf_filename="diffusion_pytorch_model.safetensors",
            url=f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{_size}x{_size}.pt",
            license=CC_BY_NC,
            description=f"Original DiT-XL/2 trained on ImageNet {_size}x{_size} latents (7M steps). CC BY-NC 4.0.",
            overrides={"input_size": _size // 8, "in_channels": 4, "num_classes": 1000, "schedule": "linear"},
            recipe={"steps": 7_000_000, "batch": 256, "lr": 1e-4, "ema": 0.9999, "schedule": "linear"},
            evaluation={
                "sampler": "ddpm",
                "steps": 250,
                "guidance": 1.5,
                "samples": 50_000,
                "feature_extractor": "ADM Inception (FID-50K)",
            },
            results={"fid": 2.27 if _size == 256 else 3.04, "measured_here": False},
            vae=SD_VAE,
        )
    )

# ANT's released checkpoints ({"ema", "model"} .pt) from a file-sharing link: download by hand, then
# pass file=PATH (see README "Weights from the papers"). FIDs are the authors' (FID-50K, ADM evaluator).
_ANT = [
    (
        "dit_l_uw_k5",
        "ant",
        5.695,
        "DiT-L/2, ANT uncertainty weighting over 5 uniform clusters (released checkpoint)",
    ),
    ("dit_s_nash_k5", "ant", 44.65, "DiT-S/2, ANT Nash-MTL over 5 uniform clusters (released checkpoint)"),
    (
        "dit_s_uw_k5",
        "ant",
        48.40,
        "DiT-S/2, ANT uncertainty weighting over 5 uniform clusters (released checkpoint)",
    ),
]
#: ANT's VAEs, from their sample_ddp.py: DiT-S/2 decodes with the SDXL VAE (fp16-fix; its config's
#: scaling factor 0.13025), DiT-L/2 with sd-vae-ft-ema (0.18215)
ANT_SDXL_VAE = {"repo": "madebyollin/sdxl-vae-fp16-fix", "scale": 0.13025}
for _arch, _tag, _fid, _desc in _ANT:
    PRETRAINED.append(
        PretrainedCfg(
            arch=_arch,
            tag=f"{_tag}_in1k_256",
            format="ant",
            file=f"~/.cache/dit-mtl-zoo/manual/{_arch}_ant.pt",
            license="see the ANT repository",
            description=_desc
            + ". Cosine noise schedule (squaredcos_cap_v2, the default of ANT's create_diffusion, which their "
            "training and sampling scripts use). Download the .pt by hand from the ANT repository's link and "
            "place it at the `file` path. ANT's repository states no licence for its code or checkpoints; "
            "their training code derives from DiT's (CC BY-NC 4.0).",
            overrides={"input_size": 32, "in_channels": 4, "num_classes": 1000, "schedule": "cosine"},
            recipe={"steps": 400_000, "batch": 240, "lr": 1e-4, "ema": 0.9999, "schedule": "cosine"},
            evaluation={
                "sampler": "ddpm",
                "steps": 250,
                "guidance": 1.5,
                "schedule": "cosine",
                "samples": 50_000,
                "feature_extractor": "ADM Inception (FID-50K)",
            },
            results={"fid": _fid, "measured_here": False},
            vae=ANT_SDXL_VAE if _arch.startswith("dit_s") else SD_VAE,
        )
    )

# SiT-XL/2 (Ma et al., 2024; willisma/SiT, MIT licence): the flow process of zoo/diffusion/flow.py. The released
# file (download.py, README table) is a plain state dict in the DiT key layout; its net was built with
# learn_sigma=True (sample.py: `learn_sigma = args.image_size == 256`) and SiT's forward keeps the first half of
# the 8 output channels, as the flow process does. sample.py decodes with sd-vae-ft-mse (`--vae` default).
PRETRAINED.append(
    PretrainedCfg(
        arch="sit_xl",
        tag="in1k_256",
        format="sit",
        url="https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
        "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0",
        license="mit",
        description="SiT-XL/2 trained on ImageNet 256x256 latents: linear interpolant, velocity prediction "
        "(the flow process; the released net carries an unused learned-sigma half). MIT licence.",
        overrides={
            "input_size": 32,
            "in_channels": 4,
            "num_classes": 1000,
            "learn_sigma": True,
            "schedule": "linear",  # the flow process's path: SiT's `--path-type Linear`
        },
        recipe={"steps": 7_000_000, "batch": 256, "lr": 1e-4, "ema": 0.9999, "path": "linear"},
        evaluation={
            "sampler": "sde",
            "steps": 250,
            "guidance": 1.5,
            "samples": 50_000,
            "feature_extractor": "ADM Inception (FID-50K)",
        },
        # SiT paper (arXiv 2401.08740), ImageNet 256x256 table, "SiT-XL (cfg = 1.5, SDE)": FID-50K 2.06,
        # IS 277.5 (the paper's number; 270.27 stood here before, from memory: wrong)
        results={"fid": 2.06, "inception_score": 277.5, "measured_here": False},
        vae={"repo": "stabilityai/sd-vae-ft-mse", "scale": 0.18215},
    )
)

# OpenAI's guided-diffusion ADM checkpoints (MIT licence): plain state dicts whose keys are ours.
_OPENAI = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
PRETRAINED.append(
    PretrainedCfg(
        arch="adm_64",
        tag="in1k",
        format="adm",
        url=_OPENAI + "64x64_diffusion.pt",
        license="mit",
        description="ADM ImageNet 64x64 class-conditional U-Net (Dhariwal & Nichol 2021), cosine schedule, learned sigma.",
        overrides={"schedule": "cosine"},
        evaluation={
            "sampler": "ddpm",
            "steps": 250,
            "guidance": 1.0,
            "samples": 50_000,
            "feature_extractor": "ADM Inception (FID-50K)",
        },
        results={"fid": 2.07, "measured_here": False},
    )
)
PRETRAINED.append(
    PretrainedCfg(
        arch="adm_256",
        tag="uncond",
        format="adm",
        url=_OPENAI + "256x256_diffusion_uncond.pt",
        license="mit",
        description="ADM ImageNet 256x256 unconditional U-Net (Dhariwal & Nichol 2021), linear schedule, learned sigma.",
        overrides={"schedule": "linear"},
        results={},
    )
)
