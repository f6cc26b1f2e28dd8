"""Makes ``tests/support`` importable from every test folder."""

import sys
from pathlib import Path

_SUPPORT_PARENT = str(Path(__file__).parent)
if _SUPPORT_PARENT not in sys.path:
    sys.path.insert(0, _SUPPORT_PARENT)
