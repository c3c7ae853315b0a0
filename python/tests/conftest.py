import os
import sys

# The tests' helper modules (tasks.py, the seed fixture) are imported by
# worker processes too: they find them through sys.path, which jobmill.Pool
# and multiprocessing pass on.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
