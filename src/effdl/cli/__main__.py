import sys

from effdl.cli import main

sys.exit(main())
