"""The benchmark suite is a folder of the repository (benchmarks/), not part of the installed package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
