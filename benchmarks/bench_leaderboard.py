"""Cost of the leaderboard's pieces per model: sampling a shipped digits model vs extracting features vs
each metric (FID, KID, precision/recall), at the leaderboard's sample counts.

The full leaderboard itself is `zoo leaderboard` (results in benchmarks/results/leaderboard_digits.*);
this shows where its time goes, so the sample count and sampler steps can be chosen knowingly.
"""

from __future__ import annotations

from typing import Any

import torch

import zoo
from benchmarks.common import interleaved_timings, report
from zoo.eval import metrics as evaluate
from zoo.eval.classifier import load_digits_classifier
from zoo.eval.leaderboard import shipped_names


def run(quick: bool = False) -> dict[str, Any]:

    extractor = load_digits_classifier()
    names = shipped_names("digits", "dit_t")
    rows = []
    for samples in (200,) if quick else (200, 500, 1000):
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(samples, 1, 8, 8, generator=generator) * 2 - 1
        real = evaluate.extract(extractor, images)
        fake = evaluate.extract(extractor, images.flip(-1))
        candidates = {
            "extract": lambda images=images: evaluate.extract(extractor, images),
            "fid": lambda real=real, fake=fake: evaluate.fid(real.features, fake.features),
            "kid (100 subsets)": lambda real=real, fake=fake: evaluate.kid(real.features, fake.features),
            "precision_recall": lambda real=real, fake=fake: evaluate.precision_recall(
                real.features, fake.features
            ),
        }
        if names:
            model = zoo.create(names[0], pretrained=True).eval()
            labels = torch.arange(samples) % 10
            candidates["sample (DDIM 25)"] = lambda labels=labels, model=model: model.sample(
                labels, steps=25, sampler="ddim"
            )
        timings = interleaved_timings(candidates, repeats=2 if quick else 3, warmup=1)
        for piece, timing in timings.items():
            rows.append(
                {"samples": samples, "piece": piece, "median_s": timing["median"], "min_s": timing["min"]}
            )
    return report(
        "leaderboard", "Leaderboard cost per model (seconds)", rows, ["samples", "piece", "median_s", "min_s"]
    )


if __name__ == "__main__":
    run()
