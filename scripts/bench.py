"""The benchmark: `python scripts/bench.py [--sections loop,startup] [--quick --page none --out FILE]`.

Its sections, the harness they share and what each measures are in src/attnlab/bench/ (start at __init__.py).
"""

from attnlab.bench import main

if __name__ == "__main__":
    main()
