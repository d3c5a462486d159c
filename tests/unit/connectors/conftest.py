"""The connector tests share two helper modules (the fake platform server and the contract cases)."""

from __future__ import annotations

import sys
from pathlib import Path

# Test directories are not packages here; make the helpers beside this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))
