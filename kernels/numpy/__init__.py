"""NumPy reference kernels: vectorised over the batch, writing into caller-provided buffers."""
