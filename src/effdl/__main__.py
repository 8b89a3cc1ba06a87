"""`python -m effdl ...` runs the `effdl` command line; it is what torchrun starts in every process:
`torchrun --nproc_per_node N -m effdl train ...`."""

import sys

from effdl.cli import main

if __name__ == "__main__":
    sys.exit(main())
