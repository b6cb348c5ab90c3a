"""Dataset examples: each unit's top activating images and regions across a folder.

Build an index once (``cnnscope index DIR --out INDEX`` or :func:`build_index`), then
ask it for a unit's examples (:meth:`Index.examples`) and their grid image
(:meth:`Index.grid`). The index is exact, resumable, incremental and can be built by
several processes with ``torchrun``; its format is described in ``docs/index-format.md``.

Examples
--------
>>> from cnnscope.models import load_model
>>> from cnnscope.index import build_index, open_index
>>> model = load_model()
>>> path = build_index(model, "photos/", ["blocks.4", "head_act"], top_k=16,
...                    out="photos.index")  # doctest: +SKIP
>>> ix = open_index(path)  # doctest: +SKIP
>>> ix.examples("blocks.4:7")[0]  # doctest: +SKIP
Example(rank=1, layer='blocks.4', channel=7, image='cats/01.jpg', ...)
"""

from ..engine import model_fingerprint
from .build import BuildResult, build_index, default_layers, run_build
from .bundle import FORMAT, VERSION, IndexFormatError
from .default import default_data_dir, default_index_path, ensure_default_index
from .reader import Example, Index, open_index
from .sources import AUGMENTATIONS, Source

__all__ = [
    "AUGMENTATIONS",
    "FORMAT",
    "VERSION",
    "BuildResult",
    "Example",
    "Index",
    "IndexFormatError",
    "Source",
    "build_index",
    "default_data_dir",
    "default_index_path",
    "default_layers",
    "ensure_default_index",
    "model_fingerprint",
    "open_index",
    "run_build",
]
