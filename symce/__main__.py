import sys

from symce.cli import main

sys.exit(main())
