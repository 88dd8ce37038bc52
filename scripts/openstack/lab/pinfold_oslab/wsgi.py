"""Serve an OpenStack WSGI module with gunicorn.

oslo.config parses ``sys.argv`` when a service loads its configuration; under
gunicorn that list holds gunicorn's own options, which oslo.config rejects,
and the worker exits with code 2 and no traceback. ``load`` empties the
argument list before importing the service's module, so gunicorn is given
``pinfold_oslab.wsgi:load("keystone.wsgi.api")``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def load(module: str) -> Any:
    """The ``application`` of ``module``, imported with an empty command line."""
    sys.argv = [sys.argv[0]]
    return importlib.import_module(module).application
