"""``python -m medseg_attn.cli`` (as torchrun runs it): the ``medseg-attn`` command."""

import sys

from medseg_attn.cli.app import main

sys.exit(main())
