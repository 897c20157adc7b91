import os

# numpy's OpenBLAS starts a thread pool of its own for the mel-filter matmul of
# feature extraction. With that pool alive, uvloop forking an ffmpeg child
# while a feature thread sat in a matmul deadlocked the whole server (the
# fork handler waits for the BLAS workers, which wait for the GIL), and under
# load the pool also competed with the model's threads. One BLAS thread per
# caller; this must run before numpy is imported, hence here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
