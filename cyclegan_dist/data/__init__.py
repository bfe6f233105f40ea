"""Data layer: shards (prepare, index), unpaired training streams, transforms, the embedded demo set.

Names are imported lazily so ``prepare``'s CLI does not pay for torch at import.
"""

_EXPORTS = {
    "prepare_shards": "prepare",
    "add_prepare_parser": "prepare",
    "read_index": "shards",
    "kaggle_sources": "kaggle",
    "UnpairedShardDataset": "streams",
    "InfiniteSampler": "streams",
    "make_loader": "streams",
    "iter_domain": "streams",
    "train_transform": "transforms",
    "eval_transform": "transforms",
    "to_uint8_image": "transforms",
    "psnr": "transforms",
    "ensure_demo_shards": "demo",
    "demo_eval_pairs": "demo",
    "painterly": "demo",
}
__all__ = [  # noqa: RUF022
    "prepare_shards",
    "add_prepare_parser",
    "read_index",
    "kaggle_sources",
    "UnpairedShardDataset",
    "InfiniteSampler",
    "make_loader",
    "iter_domain",
    "train_transform",
    "eval_transform",
    "to_uint8_image",
    "psnr",
    "ensure_demo_shards",
    "demo_eval_pairs",
    "painterly",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
