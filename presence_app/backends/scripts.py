"""The Redis Lua scripts, kept as files in ``lua/`` beside this module.

They ship as package data (pyproject.toml: ``**/*.lua``) and are read with importlib.resources,
so an installed wheel finds them as well as a checkout. No redis import here.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def lua(*names: str) -> str:
    """The scripts ``lua/<name>.lua`` joined in order: a shared library first, then the script
    that uses it (``lua("presence", "attach")``)."""
    folder = resources.files(__package__ or "presence_app.backends").joinpath("lua")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)
