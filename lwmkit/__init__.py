"""lwmkit: the Large World Model recipe as software.

Beam pipelines turn videos, images, books and text into masked, packed training shards;
a JAX ring-attention trainer consumes them stage by stage (32K -> 128K -> ... -> 1M).

The import namespace maps onto the repository's top-level folders:
``lwmkit.schemas`` -> ``schemas/``, ``lwmkit.tokenizers`` -> ``tokenizers/``,
``lwmkit.pipelines`` -> ``pipelines/``, ``lwmkit.trainer`` -> ``trainer/``.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# In a source checkout (running from the repository, or an editable install that resolved
# `lwmkit` to this folder) the sibling folders are the subpackages: put the repository root
# on this package's search path so `lwmkit.schemas` finds `schemas/`. An installed wheel
# already has them under lwmkit/, and its parent folder has no pyproject.toml.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(
    _os.path.join(_root, "schemas")
):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
