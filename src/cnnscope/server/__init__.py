"""The explorer: a local web app that shows one image's feature hierarchy as a neuron tree.

Start it with ``cnnscope serve`` or build the app with :func:`create_app`.
"""

from .app import create_app, default_data_dir

__all__ = ["create_app", "default_data_dir"]
