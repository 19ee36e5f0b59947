"""How the benchmarks measure: counts that do not depend on the machine, and paired timings with their spread.

Counted once per setting, and the same on every machine with the same torch: the aten ops a call dispatches
(each one a kernel launch on a GPU), its FLOPs (`torch.utils.flop_counter`, which counts matmuls,
convolutions and attention) and the peak bytes of the tensors it allocates. Timed: settings run interleaved,
round after round, so that a load change on the machine slows all of them alike, and each ratio is taken
within a round (paired), then summarised by its median and a bootstrap interval, or, from fewer than
`BOOTSTRAP_ROUNDS` rounds, by the smallest and largest ratio (`interval_name` says which a table shows).
"""

from __future__ import annotations

import collections
import random
import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode


class DispatchedOps(TorchDispatchMode):
    """Counts every aten op dispatched inside the `with` block, by name, after autograd's decompositions.

    A `CompositeImplicitAutograd` op (`F.linear`, `Tensor.reshape`, `F.scaled_dot_product_attention`) shows
    as the ops it decomposes into, and an op that does nothing (`.to` the same dtype) as none: what runs.
    """

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class PeakTensorBytes(TorchDispatchMode):
    """The most bytes held at once by tensors allocated inside the block (weights and inputs not included).

    Device-independent: a storage counts from the op that makes it until Python frees it, which is when the
    caching allocator could reuse it on a GPU, so this is the activation memory a call adds.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in pytree.tree_leaves((args, kwargs)):
            if isinstance(tensor, torch.Tensor):  # a view of a weight or an input is not an allocation
                self._seen.add(tensor.untyped_storage())
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:  # in-place ops and views return a storage already seen
                    self._seen.add(storage)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._release, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _cpu_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop(query, key, value, out_val=out_val)


# torch's FLOP counter knows the GPU attention kernels but not the CPU one (it would count attention as
# free); the formula is the same. `_get_raw`: the function takes tensors, `sdpa_flop` turns them into shapes.
_cpu_attention_flops._get_raw = True
ATTENTION_ON_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def counts(call: Callable[[], object]) -> dict[str, float]:
    """Dispatched ops, FLOPs and peak tensor bytes of one `call()`: the modes nest, each sees every op."""
    flops = flop_counter.FlopCounterMode(display=False, custom_mapping=ATTENTION_ON_CPU)
    with flops, DispatchedOps() as ops, PeakTensorBytes() as memory:
        call()
    return {"ops": ops.total, "flops": flops.get_total_flops(), "peak_bytes": memory.peak}


def interleaved_times(
    calls: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Seconds per call of each setting, `rounds` rounds, each round running every setting once in a new
    random order (so no setting always follows another, whose caches or clock boost it would inherit)."""
    times = {name: [] for name in calls}
    order = list(calls)
    shuffle = random.Random(0)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


# Below this many rounds a percentile bootstrap of the median has too few distinct resamples to be a 95%
# interval: the range of the rounds' ratios is reported instead, and named so.
BOOTSTRAP_ROUNDS = 5


def interval_name(rounds: int, confidence: float = 0.95) -> str:
    """What `paired_ratio`'s interval is for `rounds` rounds, as a table's column header says it."""
    return f"{confidence:.0%} CI" if rounds >= BOOTSTRAP_ROUNDS else "min–max"


def paired_ratio(
    numerator: list[float], denominator: list[float], confidence: float = 0.95, resamples: int = 10_000
) -> tuple[float, float, float]:
    """Median of the per-round ratios and an interval: a percentile-bootstrap interval of that median from
    `BOOTSTRAP_ROUNDS` rounds on, the smallest and largest ratio below that."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    if len(ratios) < BOOTSTRAP_ROUNDS:
        return statistics.median(ratios), min(ratios), max(ratios)
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return statistics.median(ratios), medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]


def verdict(low: float, high: float, rounds: int, resolution: float = 0.03) -> str:
    """What an interval of a time ratio allows one to say: a side, when it excludes 1; that the difference
    is under `resolution` (3%, the time target), when it is that narrow; otherwise nothing. From fewer than
    `BOOTSTRAP_ROUNDS` rounds the interval is only their range: nothing."""
    if rounds < BOOTSTRAP_ROUNDS:
        return "too few rounds"
    if low > 1:
        return "slower"
    if high < 1:
        return "faster"
    if low >= 1 - resolution and high <= 1 + resolution:
        return f"within {resolution:.0%}"
    return "too wide to conclude"
