"""Where an ECA gate's per-(sample, channel) values sit while exporters move axes around.

A *layout* labels each axis of a tensor computed from the pooled input x (N x C x H x W): "N",
"C", "H", "W" or "1" (a singleton axis). Squeeze, Unsqueeze, Transpose, Flatten, Reshape and
Expand map layouts to layouts; an op that would merge or split N and C raises :class:`NotEca`.
Axes whose static size is 1 carry no order, so comparisons go through :meth:`Dims.canonical`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Layout = tuple[str, ...]
ONE = "1"
X_LAYOUT: Layout = ("N", "C", "H", "W")
Target = Sequence[int | str]  # a shape tensor's elements: integers or labels of x's axes


class NotEca(Exception):
    """The candidate is not an ECA block; the message says why (reported as a near-miss)."""


@dataclass(frozen=True)
class Dims:
    """Static sizes of x's axes (None where symbolic)."""

    sizes: dict[str, int | None]

    def size(self, label: str) -> int | None:
        return 1 if label == ONE else self.sizes[label]

    def canonical(self, layout: Layout) -> Layout:
        """``layout`` with every axis of static size 1 written as "1"."""
        return tuple(ONE if self.size(label) == 1 else label for label in layout)

    def carried(self, layout: Layout) -> list[str]:
        """The labels of ``layout`` that are not singletons, in order."""
        return [label for label in self.canonical(layout) if label != ONE]


def normalize_axes(axes: Sequence[int], rank: int) -> list[int]:
    """Axes with negatives counted from the end; raises NotEca when out of range."""
    normalized = [axis + rank if axis < 0 else axis for axis in axes]
    if any(not 0 <= axis < rank for axis in normalized):
        raise NotEca(f"axes {list(axes)} out of range for rank {rank}")
    return normalized


def squeeze(layout: Layout, axes: Sequence[int] | None, dims: Dims) -> Layout:
    canonical = dims.canonical(layout)
    if axes is None:
        if any(dims.size(label) is None for label in layout):
            raise NotEca("Squeeze without axes on an axis of unknown size")
        return tuple(label for label, c in zip(layout, canonical) if c != ONE)
    removed = set(normalize_axes(axes, len(layout)))
    if any(canonical[axis] != ONE for axis in removed):
        raise NotEca(f"Squeeze removes a non-singleton axis of {list(layout)}")
    return tuple(label for axis, label in enumerate(layout) if axis not in removed)


def unsqueeze(layout: Layout, axes: Sequence[int]) -> Layout:
    rank = len(layout) + len(axes)
    inserted = set(normalize_axes(axes, rank))
    rest = iter(layout)
    return tuple(ONE if axis in inserted else next(rest) for axis in range(rank))


def transpose(layout: Layout, perm: Sequence[int] | None) -> Layout:
    perm = range(len(layout) - 1, -1, -1) if perm is None else perm
    return tuple(layout[axis] for axis in normalize_axes(perm, len(layout)))


def _merge(group: Layout, dims: Dims) -> str:
    carried = dims.carried(group)
    if len(carried) > 1:
        raise NotEca(f"merges axes {carried} of the gate")
    return carried[0] if carried else ONE


def flatten(layout: Layout, axis: int, dims: Dims) -> Layout:
    axis = axis + len(layout) if axis < 0 else axis
    return _merge(layout[:axis], dims), _merge(layout[axis:], dims)


def _resolve(element: int | str, expected: list[str], used: list[str], dims: Dims) -> str | None:
    """The label of one Reshape target element (None for -1)."""
    if isinstance(element, str):
        return element
    if element == -1:
        return None
    if element == 1:
        return ONE
    candidates = [label for label in expected if dims.size(label) == element and label not in used]
    if not candidates:
        raise NotEca(f"a Reshape target of {element} is neither 1 nor the size of a gate axis")
    return candidates[0]


def reshape(layout: Layout, target: Target, dims: Dims, allowzero: bool = False) -> Layout:
    """Reshape ``layout`` to ``target``; N and C must keep their own axes and their order."""
    if list(target).count(-1) > 1:
        raise NotEca("Reshape target has more than one -1")
    if len(target) > len(layout) and any(element == 0 and not allowzero for element in target[len(layout):]):
        raise NotEca("Reshape copies an axis its input does not have")
    expected = dims.carried(layout)
    labels: list[str | None] = []
    for axis, element in enumerate(target):
        copied = layout[axis] if element == 0 and not allowzero else element
        labels.append(_resolve(copied, expected, [label for label in labels if label], dims))
    split = labels.index(None) if None in labels else len(labels)
    before = dims.carried(tuple(labels[:split]))
    after = dims.carried(tuple(labels[split + 1:]))
    absorbed = expected[len(before):len(expected) - len(after)]
    # the -1 (if any) stands for at most one gate axis; without a -1 nothing is left to absorb
    if expected != [*before, *absorbed, *after] or len(absorbed) > (split < len(labels)):
        raise NotEca(f"Reshape to {list(target)} mixes the gate's axes {expected}")
    if split < len(labels):
        labels[split] = absorbed[0] if absorbed else ONE
    return tuple(labels)


def broadcast(layout: Layout, target: Target, dims: Dims) -> Layout:
    """Expand ``layout`` to ``target`` (numpy broadcasting), which must fit x's shape."""
    rank = max(len(layout), len(target))
    if rank > len(X_LAYOUT):
        raise NotEca(f"Expand to rank {rank}, more than x's")
    padded = (ONE,) * (rank - len(layout)) + tuple(layout)
    padded_target = (1,) * (rank - len(target)) + tuple(target)
    result = []
    for x_label, have, want in zip(X_LAYOUT[-rank:], padded, padded_target):
        if isinstance(want, int):
            want = ONE if want == 1 else x_label if dims.size(x_label) == want else None
        if want is None or (dims.size(have) != 1 and want not in (ONE, have)):
            raise NotEca(f"Expand to {list(target)} does not fit x's shape")
        result.append(have if dims.size(have) != 1 else want)
    return tuple(result)
