"""``python -m clcourse``: the ``clcourse`` command (see :mod:`clcourse.cli`)."""

from clcourse.cli import main

raise SystemExit(main())
