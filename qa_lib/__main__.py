"""``python -m qa_lib``: see :mod:`qa_lib.cli`."""

from qa_lib.cli import main

raise SystemExit(main())
