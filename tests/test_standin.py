"""The CuPy stand-in is as strict as CuPy where fastnn could go wrong on a real GPU: if it were
lenient, the suite could pass here and fail on the first day on a device."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn.kernels.cuda.symbols import SYMBOLS
from support.strict_device import CaptureError, DeviceArray


@pytest.fixture
def cp(host_cuda_library):
    from support import fake_cupy

    return fake_cupy.FakeCupy(host_cuda_library, record=False)


def test_numpy_may_not_read_a_device_array(cp):
    x = cp.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError):
        np.testing.assert_allclose(x, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(cp.asnumpy(x), [0.0, 1.0, 2.0])  # the explicit copies work
    np.testing.assert_array_equal(x.get(), [0.0, 1.0, 2.0])
    assert isinstance(cp.asnumpy(x), np.ndarray) and not np.shares_memory(cp.asnumpy(x), x._data)


def test_host_arrays_are_refused_by_device_operations_and_kernels(cp):
    x = cp.asarray(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(4, np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.matmul(np.ones((2, 2)), cp.ones((2, 2)))
    sgd = cp.RawModule(code=_kernel_source()).get_function(SYMBOLS["sgd<float>"])
    args = (np.int64(4), np.float32(0.1), np.float32(0.0), np.int32(0), np.float32(0.0), np.int32(1))
    with pytest.raises(TypeError, match="Unsupported type"):
        sgd((1,), (256,), (x, np.ones(4, np.float32), cp.zeros(4, np.float32), *args))
    sgd((1,), (256,), (x, cp.ones(4, np.float32), cp.zeros(4, np.float32), *args))
    np.testing.assert_allclose(x.get(), 0.9)


def test_reductions_give_0d_device_arrays_and_scalars_need_an_explicit_read(cp):
    total = cp.asarray(np.arange(4.0)).sum()
    assert isinstance(total, DeviceArray) and total.shape == ()
    assert float(total) == 6.0 and total.item() == 6.0
    assert isinstance(cp.dot(cp.ones(3), cp.ones(3)), DeviceArray)


def test_integer_array_indices_wrap_around_as_cupys_do(cp):
    x = cp.asarray(np.array([10.0, 11.0, 12.0]))
    np.testing.assert_array_equal(x[cp.asarray(np.array([1, 3, -4]))].get(), [11.0, 10.0, 12.0])
    np.testing.assert_array_equal(cp.take(x, cp.asarray(np.array([5])), axis=0).get(), [12.0])


def test_only_names_the_real_cupy_has(cp):
    assert cp.sqrt is not None and cp.float32 is np.float32
    with pytest.raises(AttributeError, match="no attribute 'errstate'"):
        cp.errstate  # noqa: B018  (NumPy has it, CuPy does not)


def test_stream_capture_forbids_synchronisation_host_reads_and_the_shared_pool(cp):
    x = cp.ones(4)
    stream = cp.cuda.Stream(non_blocking=True)
    with pytest.raises(CaptureError, match="null stream"):
        cp.cuda.Stream.null.begin_capture()
    with stream:
        for forbidden in (lambda: float(x[0]), lambda: x.get(), lambda: stream.synchronize(),
                          lambda: cp.cuda.Device().synchronize(), lambda: cp.asarray(np.ones(2))):
            stream.begin_capture()
            with pytest.raises(CaptureError, match="cudaErrorStreamCaptureUnsupported"):
                forbidden()
            stream.end_capture()
        for allocates in (lambda: x + 1.0, lambda: cp.empty(3), lambda: x.sum()):
            stream.begin_capture()
            with pytest.raises(CaptureError, match="shared memory pool"):
                allocates()
            stream.end_capture()


def test_a_captured_graph_replays_its_operations_on_the_same_buffers(cp):
    x, y = cp.asarray(np.array([1.0, 2.0])), cp.zeros(2)
    stream = cp.cuda.Stream(non_blocking=True)
    pool = cp.cuda.MemoryPool()
    with stream, cp.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        cp.multiply(x, 2.0, out=y)  # y = 2x
        cp.add(x, y, out=x)  # x += y
        total = x.sum()  # allocated in the private pool, recomputed on each launch
        graph = stream.end_capture()
    np.testing.assert_array_equal(x.get(), [1.0, 2.0])  # captured, not run (as CUDA)
    graph.launch(stream)
    np.testing.assert_array_equal(x.get(), [3.0, 6.0])
    assert float(total) == 9.0
    graph.launch(stream)
    np.testing.assert_array_equal(x.get(), [9.0, 18.0])
    assert float(total) == 27.0 and graph.launched == 2
    del pool
    with pytest.raises(CaptureError, match="pool that was freed"):
        graph.launch(stream)


def _kernel_source() -> str:
    from fastnn.kernels.cuda.launch import module_source

    return module_source()
