"""`python -m sae_kit.cli COMMAND …`: the same as `sae-kit COMMAND …` (torchrun launches this form)."""

import sys

from sae_kit.cli import main

sys.exit(main())
