"""``python -m relprop``: the command line of :mod:`relprop.cli`."""

from relprop.cli import run

if __name__ == "__main__":
    run()
