"""Data: released layout readers, the packed shard format, batch loaders, embeddings.

Submodules are imported on use (``from biam.data.packed import PackedDataset``) so that
importing :mod:`biam.data` stays cheap.
"""
