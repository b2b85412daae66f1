"""Allow ``python -m nfvha``."""
import sys

from nfvha.cli import main

sys.exit(main())
