"""Datasets as uint8 NHWC arrays: CIFAR-10 (``cifar10``, decoded with a restricted unpickler), a
folder of images and scikit-learn's bundled ``digits`` (``images``); ``batches`` iterates them,
exactly resumably, with all randomness from an explicit ``np.random.Generator``.
"""

from train.data.batches import BatchIterator, data_fingerprint, rng_from_state_json, rng_state_json
from train.data.cifar10 import (
    CIFAR10_ARCHIVE,
    CIFAR10_CHECKSUMS,
    CIFAR10_ENV,
    CIFAR10_FOLDER,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    CIFAR10_URL,
    Cifar10Checksums,
    decode_cifar_batch,
    default_cache_dir,
    find_cifar10,
    load_cifar10,
    md5_bytes,
    md5_file,
)
from train.data.errors import ChecksumError, DataError, DataNotFoundError
from train.data.images import (
    DATASETS,
    IMAGE_EXTENSIONS,
    load_dataset,
    load_digits,
    load_image_folder,
    to_model_range,
    to_uint8,
)

__all__ = [
    "BatchIterator", "CIFAR10_ARCHIVE", "CIFAR10_CHECKSUMS", "CIFAR10_ENV", "CIFAR10_FOLDER",
    "CIFAR10_TEST_FILES", "CIFAR10_TRAIN_FILES", "CIFAR10_URL", "ChecksumError", "Cifar10Checksums",
    "DATASETS", "DataError", "DataNotFoundError", "IMAGE_EXTENSIONS", "data_fingerprint",
    "decode_cifar_batch", "default_cache_dir", "find_cifar10", "load_cifar10", "load_dataset",
    "load_digits", "load_image_folder", "md5_bytes", "md5_file", "rng_from_state_json",
    "rng_state_json", "to_model_range", "to_uint8",
]
