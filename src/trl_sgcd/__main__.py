"""`python -m trl_sgcd ...` is `trl-sgcd ...` (and what `accelerate launch -m trl_sgcd train ...` runs)."""

import sys

from trl_sgcd.cli import main

if __name__ == "__main__":
    sys.exit(main())
