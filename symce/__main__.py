import sys

from symce.cli import main

if __name__ == "__main__":  # not when a child process re-imports the parent's main module
    sys.exit(main())
