"""Command-line scripts of trl-sgcd (`trl-sgcd train`, ...). Each module exposes `main(argv)`."""
