"""``python -m training``: the same as the ``stream-ae-train`` command."""

from training.cli import main

raise SystemExit(main())
