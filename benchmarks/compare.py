"""Compare server configurations in alternating rounds: see foreman.bench.compare."""

from foreman.bench.compare import main

if __name__ == "__main__":
    main()
