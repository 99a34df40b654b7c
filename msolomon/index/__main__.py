"""`python -m msolomon.index build | add | search` (see `msolomon.index.cli`)."""
from msolomon.index.cli import main

raise SystemExit(main())
