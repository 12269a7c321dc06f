"""``python -m edge_app``: the same as the ``edge-emotion`` command."""

from edge_app.cli import main

raise SystemExit(main())
