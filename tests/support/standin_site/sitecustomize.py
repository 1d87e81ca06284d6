"""Every Python process started with this folder on ``PYTHONPATH`` and ``FASTNN_CUPY_STANDIN`` set
to a folder imports the strict CuPy stand-in (``tests/support/fake_cupy.py``) as ``cupy``, its
kernels built into that folder once. CI's second test run uses it, so that the processes the tests
start (the CLI, ``mpiexec`` ranks) see the same "GPU" as the test process. ``cupy`` is imported
only when something imports it, as the real one would be."""

import importlib.abc
import importlib.machinery
import os
import sys

_FOLDER = os.environ.get("FASTNN_CUPY_STANDIN")


class _StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec("cupy", self) if fullname == "cupy" else None

    def create_module(self, spec):
        tests = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if tests not in sys.path:
            sys.path.append(tests)
        from support import fake_cupy

        module = fake_cupy.FakeCupy(fake_cupy.host_library(_FOLDER), record=False)
        module.__spec__ = spec
        return module

    def exec_module(self, module):
        pass


if _FOLDER:
    sys.meta_path.insert(0, _StandinFinder())
