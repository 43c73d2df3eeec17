"""What every command line entry point (``python -m sfpn.train``, ``sfpn.eval``) checks first."""
from __future__ import annotations

import sys


def check_not_shadowed() -> None:
    """Exits with one error line when ``import sfpn`` found a folder named ``sfpn`` (a checkout of
    this repository, say) instead of the installed package.

    Python imports such a folder, one without ``__init__.py``, as a namespace package when it
    sits in the working directory, ahead of an editable install; the submodules still import, but
    the package's own names do not (``module 'sfpn' has no attribute '__version__'``). The check
    lives here, in the entry points, because the shadowed package runs none of its own code.
    """
    package = sys.modules[__package__]
    if getattr(package, "__file__", None) is None:
        folders = ", ".join(list(package.__path__))
        raise SystemExit(
            f"error: 'import sfpn' found the folder {folders} (a checkout named sfpn?), which shadows the "
            "installed sfpn package; run from another folder, or rename that one"
        )
