"""The digits feature extractor: a small CNN trained by the project on the digits train split.

Its penultimate activations are the FID/KID/precision/recall features of the digits leaderboard and
its logits give the Inception Score and class-conditional accuracy (zoo.evaluate). The shipped
weights live in `zoo/pretrained/digits_classifier/` with a card holding their held-out accuracy;
`python -m zoo.classifier --out DIR` regenerates them (scripts/train_shipped.py calls it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.hub import PACKAGE_WEIGHTS, load_safetensors, sha256_of, verify_sha256

CLASSIFIER_DIR = PACKAGE_WEIGHTS / "digits_classifier"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


class DigitsClassifier(nn.Module):
    """conv-conv-pool-conv-pool -> `num_features` features -> class logits, for (N, C, 8, 8) images in [-1, 1]."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, num_features: int = 64
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "num_features": num_features,
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
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, num_features),
            nn.GELU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, num_features), logits (N, num_classes)): the extractor interface of zoo.evaluate."""
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


def train_digits_classifier(
    epochs: int = 60, batch: int = 64, lr: float = 3e-3, seed: int = 0
) -> tuple[DigitsClassifier, float]:
    """Train on the digits train split (AdamW, cosine schedule, shift augmentation); return it and its test accuracy."""
    from zoo.data import load_dataset

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier(in_channels=train.channels, num_classes=train.num_classes)
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
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    digest = sha256_of(directory / WEIGHTS_FILE)
    config = {"architecture": model.config, "sha256": digest, **facts}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    card = [
        "# digits_classifier",
        "",
        "The feature extractor of the digits leaderboard: a small CNN trained on the digits *train* split",
        "(scikit-learn's 8x8 digits, the seeded 90/10 split of `zoo.data`). Its penultimate activations",
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
    """The shipped extractor (its weights checked against the sha256 in its config.json)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / CONFIG_FILE} not found: regenerate the classifier with "
            f"`python -m zoo.classifier --out {directory}`"
        )
    config = json.loads((directory / CONFIG_FILE).read_text())
    verify_sha256(directory / WEIGHTS_FILE, config["sha256"])
    model = DigitsClassifier(**config["architecture"])
    model.load_state_dict(load_safetensors(directory / WEIGHTS_FILE))
    model.sha256 = config["sha256"]
    model.test_accuracy = float(config["test_accuracy"])
    return model.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    """`python -m zoo.classifier --out DIR`: train the digits classifier and write it with its card."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(CLASSIFIER_DIR))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, test_accuracy = train_digits_classifier(epochs=args.epochs, seed=args.seed)
    from zoo.data import load_dataset

    facts = {
        "test_accuracy": test_accuracy,
        "test_size": len(load_dataset("digits", split="test")),
        "training": {
            "data": "digits train split",
            "epochs": args.epochs,
            "batch": 64,
            "lr": 3e-3,
            "optimizer": "AdamW, one-cycle",
            "augmentation": "random 1-pixel shifts",
            "seed": args.seed,
        },
        "command": f"python -m zoo.classifier --out {args.out} --epochs {args.epochs} --seed {args.seed}",
    }
    save_classifier(model, args.out, facts)
    print(f"test accuracy {test_accuracy:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
