"""``python -m service.cli``: the ``tbps`` command."""

from service.cli.main import main

raise SystemExit(main())
