import os

# numpy's OpenBLAS starts a thread pool of its own for the mel-filter matmul of
# feature extraction. Called from several worker threads at once it competes
# with the model's threads, and under load it was seen spinning without end
# (OpenBLAS inner_thread) and stalling every batch. One BLAS thread per caller;
# this must run before numpy is imported, hence here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
