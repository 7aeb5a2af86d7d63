"""`foreman bench` without the console script: python benchmarks/run.py [--quick] [--json PATH] ..."""

import sys

from foreman.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
