"""What the ECA fusion pass did: fused blocks, and near-misses with the reason they were left alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FusedBlock:
    """One ECA block replaced by an EcaAttention node."""

    node: str                   # name of the EcaAttention node
    replaced: tuple[str, ...]   # names of the nodes it replaced (the multiply first)
    channels: int | None        # None when the channel count is symbolic
    kernel_size: int
    pad_mode: str               # "constant" (zero padding) or "wrap" (circular)
    dtype: str                  # dtype the node computes in, e.g. "float32"
    gate: str = "sigmoid"
    dropped_qdq: int = 0        # QuantizeLinear/DequantizeLinear nodes inside the block (gate path, weight)


@dataclass(frozen=True)
class NearMiss:
    """A gated multiply that looks like attention but was not fused."""

    nodes: tuple[str, ...]      # the multiply first, then the gate path from the pooling on
    reason: str


@dataclass
class FusionReport:
    """Fused ECA blocks and near-misses; ``to_dict`` keys are stable (written as JSON)."""

    fused: list[FusedBlock] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)

    @property
    def num_fused(self) -> int:
        return len(self.fused)

    def counts(self) -> Counter[tuple[int | None, int, str]]:
        """Fused blocks per (channels, kernel size, pad mode)."""
        return Counter((block.channels, block.kernel_size, block.pad_mode) for block in self.fused)

    def to_dict(self) -> dict:
        return {
            "num_fused": self.num_fused,
            "num_near_misses": len(self.near_misses),
            "by_shape": [{"channels": c, "kernel_size": k, "pad_mode": mode, "count": n}
                         for (c, k, mode), n in sorted(self.counts().items(), key=_shape_order)],
            "fused": [asdict(block) for block in self.fused],
            "near_misses": [asdict(miss) for miss in self.near_misses],
        }

    def summary_table(self) -> str:
        """A short table: fused blocks per (channels, k, padding), then near-misses with reasons."""
        lines = [f"ECA blocks fused: {self.num_fused}"]
        if self.fused:
            lines.append(f"  {'channels':>8}  {'k':>3}  {'padding':<8}  {'count':>5}")
            for (channels, k, mode), n in sorted(self.counts().items(), key=_shape_order):
                lines.append(f"  {'?' if channels is None else channels:>8}  {k:>3}  {mode:<8}  {n:>5}")
        dropped = sum(block.dropped_qdq for block in self.fused)
        if dropped:
            lines.append(f"Quantize/DequantizeLinear nodes inside the fused blocks, dropped (ECA stays float): {dropped}")
        lines.append(f"Near-misses: {len(self.near_misses)}")
        lines += [f"  {miss.nodes[0]}: {miss.reason}" for miss in self.near_misses]
        return "\n".join(lines)


def _shape_order(item: tuple[tuple[int | None, int, str], int]) -> tuple:
    (channels, k, mode), _ = item
    return (channels is None, channels or 0, k, mode)
