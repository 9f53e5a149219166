"""`python -m bbn ...` (and `torchrun ... -m bbn train ...`): the bbn command line."""

from bbn.cli import main

raise SystemExit(main())
