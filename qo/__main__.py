"""``python -m qo``: the same command line as the ``qo`` script."""

from qo.cli import main

if __name__ == "__main__":
    main()
