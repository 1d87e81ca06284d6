"""CUDA kernels (``fastnn_kernels.cu``, ``fastnn_math.cuh``) and their launcher (``launch``)."""
