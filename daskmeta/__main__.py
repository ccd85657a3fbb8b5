"""``python -m daskmeta``: the command line."""

from daskmeta.cli import run

if __name__ == "__main__":
    run()
