"""``python -m daskmeta.cli``: the ``daskmeta`` command."""

from daskmeta.cli import run

if __name__ == "__main__":
    run()
