# batching/__init__.py pins numpy's OpenBLAS to one thread (why: see there); that
# has to happen before numpy is first imported, and app's modules import numpy,
# so the package is loaded first. One place sets the variable.
import batching  # noqa: F401
