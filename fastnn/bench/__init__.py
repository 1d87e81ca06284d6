"""``fastnn bench``: how fast the matrix core, the fused kernels and training are on this machine,
against naive loops, plain NumPy and PyTorch, with the machine described alongside.

Sections (each a list of ``Measurement``): ``matrix`` (GFLOP/s), ``elementwise`` (GB/s),
``training`` (samples/s and accuracy). ``report`` turns them into a table, JSON and a chart.
"""
