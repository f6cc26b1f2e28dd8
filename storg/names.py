"""The shape of a node id, on its own so that light processes (storgctl) need not import the config.

:mod:`storg.config` (which imports YAML) and :mod:`storg.net.identity` both check node ids
against :data:`NODE_ID_RE`.
"""

from __future__ import annotations

import re

NODE_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
"""A node id: 1-64 of ``[a-z0-9_-]``."""
