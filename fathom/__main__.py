"""`python -m fathom`: the same as the `fathom` console script."""

from fathom.cli import main

raise SystemExit(main())
