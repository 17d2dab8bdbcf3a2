"""One entry point for every place a segmentation dataset can come from: an embedded synthetic task name, a
`save_to_disk` directory, a folder of images and masks, a local folder `datasets.load_dataset` reads (parquet, json,
imagefolder, ...), or a Hub id."""

import os
from pathlib import Path

import datasets

from .formats import load_image_mask_folder
from .synthetic import SYNTHETIC_TASKS, load_synthetic_task


def load_segmentation_dataset(
    dataset_name: str | os.PathLike,
    dataset_config_name: str | None = None,
    *,
    cache_dir: str | None = None,
    synthetic_options: dict | None = None,
) -> datasets.DatasetDict:
    """
    Load a segmentation dataset as a `DatasetDict`, whatever its source.

    Args:
        dataset_name (`str` or `os.PathLike`), in the order they are tried:
            - the name of an embedded synthetic task (`SYNTHETIC_TASKS`: `simple`, `generic`, `face_parts`,
              `banners`, `plates`), generated deterministically with `synthetic_options` (e.g. `num_train`, `seed`);
            - a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
            - a directory with `images/` and `masks/` sub-folders (paired by file name; see `load_image_mask_folder`);
            - any other local directory or file pattern `datasets.load_dataset` reads (parquet, json, imagefolder...);
            - a Hub dataset id (needs network or a local Hub cache).
        dataset_config_name (`str`, *optional*): the `datasets` configuration name, for Hub/builder datasets.
        cache_dir (`str`, *optional*): `datasets` cache directory.
        synthetic_options (`dict`, *optional*): keyword arguments of `load_synthetic_task`.

    Returns:
        `datasets.DatasetDict`; a single dataset becomes `{"train": dataset}`.
    """
    name = str(dataset_name)
    if name in SYNTHETIC_TASKS:
        return load_synthetic_task(name, **(synthetic_options or {}))
    if synthetic_options:
        raise ValueError(f"synthetic options {sorted(synthetic_options)} only apply to {sorted(SYNTHETIC_TASKS)}.")
    path = Path(name)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif (path / "images").is_dir() and (path / "masks").is_dir():
            loaded = load_image_mask_folder(path)
        else:
            loaded = datasets.load_dataset(str(path), dataset_config_name, cache_dir=cache_dir)
    else:
        loaded = datasets.load_dataset(name, dataset_config_name, cache_dir=cache_dir)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded
