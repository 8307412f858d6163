"""``python -m nodeopt COMMAND ...`` (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
