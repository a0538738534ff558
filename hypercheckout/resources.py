"""The files the service reads at run time besides its code: templates, static assets, the nginx template, Lua
scripts and migrations.

They are package data, found with importlib.resources, so an installed wheel serves exactly as a checkout does. In
the repository templates/, static/ and nginx/ stay at the top; the package reaches them through symbolic links of
the same names, which the sdist and the wheel turn into plain folders.
"""

from __future__ import annotations

import errno
from importlib import resources
from pathlib import Path

PACKAGE = "hypercheckout"


def _on_disk(parts: tuple[str, ...]) -> Path:
    found = resources.files(PACKAGE).joinpath(*parts)
    if not isinstance(found, Path):
        # A zipped import has no directory to serve from; pip and pipx always install unpacked.
        raise FileNotFoundError(errno.ENOENT, "hypercheckout must be installed unpacked, not imported from a zip",
                                str(found))
    return found


def resource_dir(*parts: str) -> Path:
    """A folder of the package on disk: Tornado's static files and Jinja2's loader want a real directory.

    A missing folder is an install that lost its data (a wheel built without package data, a stripped image): the
    FileNotFoundError names the path, which the CLI reports as a missing file rather than as anything else.
    """
    found = _on_disk(parts)
    if not found.is_dir():
        raise FileNotFoundError(errno.ENOENT, "a folder of the installed package is missing (reinstall "
                                              "hypercheckout)", str(found))
    return found


def resource_file(*parts: str) -> Path:
    """A file of the package on disk, such as the nginx template."""
    found = _on_disk(parts)
    if not found.is_file():
        raise FileNotFoundError(errno.ENOENT, "a file of the installed package is missing (reinstall hypercheckout)",
                                str(found))
    return found


def resource_text(*parts: str) -> str:
    return resource_file(*parts).read_text(encoding="utf-8")
