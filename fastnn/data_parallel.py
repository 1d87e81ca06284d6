"""What ``fit`` does differently when it trains on several ranks (``fit(..., distributed=...)``).

The promise: N ranks with global batch ``B`` train the same model as one process with batch
``B``, to float rounding, with bit-identical parameters on every rank.

- Every rank holds the whole dataset and draws the same order from the same generator (rank 0's
  state, broadcast at the start); each rank computes its contiguous share of each global batch
  (``World.shard``; a share may be empty in a ragged last batch).
- A rank's loss gradient is its shard's mean scaled by ``shard / batch``, so the sum over the
  ranks is the gradient of the global batch's mean loss.
- Once a step, one in-place allreduce of ``Network.gradient_message()``: the flat gradients, then
  the shard's loss sum, its correct count and a stop flag (Ctrl-C on any rank). Every rank then
  holds the same sums and takes the same decisions at the same step: the NaN guard (a non-finite
  loss or gradient anywhere is non-finite in the sum), the stop, the update.
- At the start, rank 0's parameters, buffers, run state of layers (a Dropout's seed), optimizer
  state and generator state are broadcast; ``resume`` reads the checkpoint on rank 0 and
  broadcasts its bytes, so every rank continues from the same state.
- Only rank 0 writes checkpoints and shows progress; validation is sharded and its sums are
  allreduced once per epoch.

Layers that compute over the batch see their rank's shard: BatchNorm1d normalises over it (as
PyTorch's DDP without SyncBatchNorm does) and keeps its running statistics per rank until the
end of ``fit``, when rank 0's are broadcast; Dropout draws its masks per shard, so a run with
Dropout is a valid run but not bit-comparable with one process.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .distributed import World

# The message's slots after the gradients; ``Network`` allocates MESSAGE_SLOTS of them.
_LOSS, _CORRECT, _STOP = 0, 1, 2
MESSAGE_SLOTS = 4


class DataParallel:
    """The per-step reduction and the start-of-run agreement for one ``fit`` on ``world``."""

    def __init__(self, world: World, network: Any) -> None:
        self.world = world
        self.network = network
        self.backend = network.backend
        self.message = network.gradient_message()
        self.tail = self.message[network.flat_parameters()[1].size:]

    # --- the start of a run ------------------------------------------------------------------------

    def agree(self, n: int, batch_size: int, epochs: int, shuffle: bool) -> None:
        """Check that every rank trains the same run: the same number of samples, batch size,
        epochs and parameters (a mismatch would pair different steps' messages). Every rank
        raises the same ``ValueError`` when they differ."""
        mine = (n, batch_size, epochs, bool(shuffle), int(self.message.size), str(self.network.dtype))
        every = self.world.comm.allgather(mine)
        if any(other != every[0] for other in every):
            names = ("samples", "batch_size", "epochs", "shuffle", "gradient message size", "dtype")
            rows = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v}" for k, v in zip(names, values))
                             for r, values in enumerate(every))
            raise ValueError(f"distributed fit: every rank must train the same run on the same data, got {rows}")

    def broadcast_state(self, network: Any, optimizer: Any, rng: np.random.Generator) -> None:
        """Rank 0's parameters, buffers, layers' run state, optimizer state and generator."""
        world = self.world
        params, _ = network.flat_parameters()
        for array in (params, *network.named_buffers().values()):
            self.broadcast_array(array)
        run_state = world.broadcast_object([{key: getattr(layer, key) for key in layer.state_keys}
                                            for layer in network.layers])
        for layer, values in zip(network.layers, run_state):
            for key, value in values.items():
                setattr(layer, key, value)
        config, buffers = world.broadcast_object(optimizer.state_dict())
        if not world.is_main and buffers:
            optimizer.load_state_dict(config, buffers, network)
        elif not world.is_main:
            optimizer.steps = int(config["steps"])
        rng.bit_generator.state = world.broadcast_object(rng.bit_generator.state)

    def broadcast_array(self, array: Any) -> None:
        """Rank 0's values into ``array`` (any backend's), in place."""
        host = self.backend.to_numpy(array)
        if host is array:
            self.world.broadcast(array)
        else:
            host = np.ascontiguousarray(host)
            self.world.broadcast(host)
            array[...] = self.backend.asarray(host, array.dtype)

    def read_checkpoint(self, path: str) -> bytes:
        """The bytes of the checkpoint at ``path`` as rank 0 reads them, on every rank (a
        failure to read it raises the same error everywhere)."""
        payload: Any = None
        if self.world.is_main:
            try:
                with open(os.fspath(path), "rb") as handle:
                    payload = handle.read()
            except OSError as exc:
                payload = exc
        payload = self.world.broadcast_object(payload)
        if isinstance(payload, OSError):
            raise payload
        return payload

    # --- every step ---------------------------------------------------------------------------------

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        return self.world.shard(start, stop)

    def reduce(self, loss_sum: Any, correct: Any, stop: bool) -> None:
        """Sum the gradients (already in the message) and this rank's loss sum, correct count
        and stop flag over the ranks, in place. Values stay on the device where they are."""
        tail = self.tail
        tail[_LOSS] = loss_sum
        tail[_CORRECT] = 0 if correct is None else correct
        tail[_STOP] = 1.0 if stop else 0.0
        self.backend.allreduce(self.world, self.message)

    @property
    def loss_sum(self) -> Any:
        return self.tail[_LOSS]

    @property
    def correct(self) -> Any:
        return self.tail[_CORRECT]

    def stop_requested(self) -> bool:
        """Whether any rank asked to stop at the last step (a read from the device on CuPy)."""
        return bool(self.tail[_STOP] > 0)

    # --- validation ---------------------------------------------------------------------------------

    def sum_scores(self, loss_sum: float, correct: float, count: int) -> tuple[float, float, int]:
        """Validation sums of every rank's shard (once per epoch, in float64 on the host)."""
        sums = self.world.allreduce(np.array([loss_sum, correct, count], np.float64))
        return float(sums[0]), float(sums[1]), int(round(sums[2]))
