"""`python -m msolomon.evaluation`."""
import sys

from msolomon.evaluation.cli import main

sys.exit(main())
