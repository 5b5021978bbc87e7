# Allows `python -m srsd`.
from srsd.cli import main

raise SystemExit(main())
