"""``python -m cnnscope`` (also what ``torchrun -m cnnscope`` runs)."""

import sys

from .cli import main

sys.exit(main())
