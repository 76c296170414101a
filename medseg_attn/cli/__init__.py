"""The ``medseg-attn`` command line: one ``main()`` (:mod:`medseg_attn.cli.app`), one module per task's commands.

Nothing in the library imports this package; it imports the tasks.
"""

from medseg_attn.cli.app import main

__all__ = ["main"]
