"""Evaluation: metrics (FID, KID, precision/recall, IS on any feature extractor), the Inception and
digit classifiers, sampling to files, the leaderboard, and the demo. Imports the core, the hub and
data; never the trainer's internals beyond the public Trainer, nor the CLI."""
