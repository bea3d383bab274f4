"""The one cost model of the scheduler: load times per tier, memory prices, value per byte.

Shared by the policies (tier thresholds), the simulator (cold-start seconds, evictions), the
planner (placement by value per byte) and the advisor (money). The live system passes the
transition times it measured on its workers; without them, times come from the model's size
and the documented throughputs below, which are conservative numbers for a cloud GPU host
(S3 at a few hundred MB/s, a local NVMe SSD, PCIe 4 x16) rather than measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.policies.base import Tier

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Throughputs:
    """Defaults for the time to raise a model one tier (used when nothing was measured).

    Attributes:
        remote_bytes_per_s: object store download (parallel ranged GETs).
        remote_latency_s: first byte + manifest + sha256 tail per fetch.
        disk_bytes_per_s: page-in of a memory-mapped file from a local SSD.
        restore_s: building the module on the meta device and assigning the mapped tensors.
        device_bytes_per_s: host to GPU copy.
        warmup_s: sample inferences and the health check before a model is HOT.
    """

    remote_bytes_per_s: float = 200 * MiB
    remote_latency_s: float = 0.5
    disk_bytes_per_s: float = 2 * GiB
    restore_s: float = 0.1
    device_bytes_per_s: float = 10 * GiB
    warmup_s: float = 0.2


@dataclass(frozen=True)
class Prices:
    """Memory prices in USD per GB-hour (GPU memory, host RAM, local disk).

    The GPU and host defaults are the settings' ``gpu_gb_hour_price`` and
    ``host_gb_hour_price``; the disk default is a provisioned SSD's ~0.08 USD per GB-month.
    """

    gpu_gb_hour: float = 2.50
    host_gb_hour: float = 0.005
    disk_gb_hour: float = 0.0001

    def per_gb_hour(self, tier: Tier | str) -> float:
        """Price of holding one GB for an hour at ``tier`` (REMOTE costs nothing here)."""
        t = Tier.parse(tier)
        return {Tier.HOT: self.gpu_gb_hour, Tier.HOST: self.host_gb_hour,
                Tier.DISK: self.disk_gb_hour, Tier.REMOTE: 0.0}[t]


def default_to_hot_s(size_bytes: int, throughputs: Throughputs | None = None) -> dict[str, float]:
    """Seconds to reach HOT from each tier for a model of ``size_bytes``, from throughputs.

    Args:
        size_bytes: the model's weights in bytes (>= 0).
        throughputs: transfer rates and fixed costs; defaults when None.

    Returns:
        ``{"HOT": 0, "HOST": …, "DISK": …, "REMOTE": …}``, increasing with coldness.
    """
    tp = throughputs or Throughputs()
    host = size_bytes / tp.device_bytes_per_s + tp.warmup_s
    disk = host + size_bytes / tp.disk_bytes_per_s + tp.restore_s
    remote = disk + size_bytes / tp.remote_bytes_per_s + tp.remote_latency_s
    return {Tier.HOT.name: 0.0, Tier.HOST.name: host, Tier.DISK.name: disk,
            Tier.REMOTE.name: remote}


@dataclass(frozen=True)
class ModelCosts:
    """What keeping and loading one model costs.

    Attributes:
        model: the model's name.
        size_bytes: bytes the model takes at HOST and at HOT.
        to_hot_s: seconds to reach HOT from each tier (tier-name keys; measured by the
            live system, or :func:`default_to_hot_s`).
    """

    model: str
    size_bytes: int
    to_hot_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size_bytes <= 0:
            raise SchedulerError(
                f"model {self.model!r} has size {self.size_bytes} bytes; give its weights' "
                "size in bytes (> 0)"
            )
        if not self.to_hot_s:
            object.__setattr__(self, "to_hot_s", default_to_hot_s(self.size_bytes))

    def seconds_to_hot(self, tier: Tier | str) -> float:
        """Seconds of cold start when a request finds the model at ``tier``."""
        return float(self.to_hot_s.get(Tier.parse(tier).name, self.to_hot_s[Tier.REMOTE.name]))

    def seconds_saved(self, tier: Tier | str, instead_of: Tier | str) -> float:
        """Cold-start seconds avoided per arrival by holding ``tier`` instead of ``instead_of``."""
        return max(0.0, self.seconds_to_hot(instead_of) - self.seconds_to_hot(tier))

    def value_per_byte(self, tier: Tier | str, arrival_prob: float,
                       instead_of: Tier | str = Tier.DISK) -> float:
        """Expected cold-start seconds avoided per byte of budget in the next minute.

        Args:
            tier: the tier the model would hold.
            arrival_prob: probability of an arrival in the next minute (0..1).
            instead_of: where the model would be otherwise.
        """
        return arrival_prob * self.seconds_saved(tier, instead_of) / self.size_bytes

    def memory_cost_usd(self, tier: Tier | str, minutes: float, prices: Prices | None = None) -> float:
        """USD to hold the model at ``tier`` for ``minutes``."""
        p = prices or Prices()
        return self.size_bytes / GiB * p.per_gb_hour(tier) * minutes / 60.0


def host_threshold(costs: ModelCosts | None, hot_threshold: float,
                   prices: Prices | None = None) -> float:
    """Arrival probability above which a model not worth HOT is worth holding at HOST.

    ``hot_threshold`` encodes what a cold start is worth in minutes of the model's GPU
    memory (``B = 1/θ - 1``). Holding at HOST instead of DISK saves the fraction
    ``1 - s_HOST/s_DISK`` of a cold start and costs host memory at ``host/gpu`` of the GPU
    price, so the break-even is ``h/(1-h) = (host/gpu) / (B · (1 - s_HOST/s_DISK))``.

    Args:
        costs: the model's costs (relative default times when None).
        hot_threshold: the HOT threshold θ in (0, 1).
        prices: memory prices; defaults when None.

    Returns:
        The HOST threshold in (0, θ].
    """
    p = prices or Prices()
    c = costs or ModelCosts("", GiB)
    breakeven_min = 1.0 / hot_threshold - 1.0
    saved = c.seconds_saved(Tier.HOST, Tier.DISK) / max(c.seconds_to_hot(Tier.DISK), 1e-9)
    if saved <= 0 or p.gpu_gb_hour <= 0:
        return hot_threshold
    odds = (p.host_gb_hour / p.gpu_gb_hour) / (breakeven_min * saved)
    return min(hot_threshold, odds / (1.0 + odds))
