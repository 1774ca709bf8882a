"""Where a model's token ids go: the positions of the input ids, followed through the operations that only rearrange
them, while the explained model runs.

relprop explains integer inputs through the token embedding: the embedded input is the explained tensor, and each
token's relevance is that of its embedding vector. A model may embed a rearranged copy of its ids rather than the
ids themselves: XLNet embeds them time-major (``input_ids.transpose(0, 1)``), BART's decoder embeds them shifted one
step right behind a start token. :class:`IdRoutes` gives every integer tensor computed from the ids a *position map*
of the same shape: the flat index of the input id each element holds, :data:`CONSTANT` where it holds an id that is
not the input's (a start token, padding), :data:`CHANGED` where an operation computed it from ids without merely
moving them (``ids + 1``, a cumulative sum). An embedding of such a tensor then takes the explained embedded input at
the positions its ids came from, and its relevance goes back to those tokens.

>>> ids = torch.tensor([[5, 6, 7]])
>>> with IdRoutes(ids) as routes:
...     shifted = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)
...     changed = ids + 1
...     routes.positions(shifted).tolist(), routes.positions(changed).tolist()
([[-1, 0, 1]], [[-2, -2, -2]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import ops
from .core import remove_mode

CONSTANT = -1  # an id that is none of the input's: a start token, padding
CHANGED = -2  # an id computed from the input's by an operation that does not merely move it

# Operations whose integer result holds the values of their data arguments, moved: the same operation on the
# position maps moves the positions alike. (Not sort and topk, which move by value; not tril and triu, which write
# zeros that are not constants of the model's choosing but look like position 0 in a map.)
_CASTS = frozenset({"to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda", "long", "int",
                    "short", "char", "byte"})
_MOVING = ops.ROUTE.names - {"sort", "topk", "tril", "triu"} | {"copy_", "detach"} | _CASTS
# Operations whose result holds none of the ids' values (ids.new_zeros(...), torch.full_like(ids, 2)): constants
_FRESH = ops.CONSTANT.names - {"detach"}
# Where an op's data arguments are, other than its first: the values it brings in (a filled number is a constant)
_VALUE_AT = {**{name: at for name, ((at, _), _) in ops.NEW_VALUES.items() if name != "where"}, "copy_": 1}
_DATA_KEYS = frozenset({"input", "other", "value", "tensors", "src", "source"})


def _is_ids(value: Any) -> bool:
    return isinstance(value, Tensor) and not value.is_floating_point() and not value.is_complex() \
        and value.dtype is not torch.bool


class IdRoutes(TorchFunctionMode):
    """While active (a context manager), the position map of every integer tensor the model computes from ``ids``.

    The maps follow the routing operations of :data:`relprop.ops.ROUTE` (views, indexing, ``cat``,
    ``masked_fill``, ``torch.where``, ``__setitem__``, copies), in place where the model works in place, so that a
    map of a view is a view of its base's map. Any other operation on a mapped tensor gives its integer result, or
    the tensor it changes in place, :data:`CHANGED` positions."""

    def __init__(self, ids: Tensor) -> None:
        super().__init__()
        positions = torch.arange(ids.numel(), device=ids.device).reshape(ids.shape)
        self._maps: dict[int, tuple[Tensor, Tensor]] = {id(ids): (ids, positions)}  # the tensor kept alive: ids

    def positions(self, tensor: Tensor) -> Tensor | None:
        """The position map of ``tensor`` (a tensor of its shape), None for a tensor not computed from the ids."""
        held = self._maps.get(id(tensor))
        return held[1] if held is not None and held[0] is tensor else None

    def __enter__(self) -> IdRoutes:
        # at the bottom of the torch-function mode stack, below relprop's guard if it is active: the guard takes
        # itself off the top of the stack inside ruled modules, which a mode above it would prevent
        above = [torch._C._pop_torch_function_stack() for _ in range(torch._C._len_torch_function_stack())]
        for mode in (self, *reversed(above)):
            torch._C._push_on_torch_function_stack(mode)
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_mode(self)
        self._maps.clear()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self._touches(args) and not (kwargs and self._touches(tuple(kwargs.values()))):
            return result
        name = ops.function_name(func)
        with torch._C.DisableTorchFunction():  # relprop's own bookkeeping: no mode need see it
            if name in _MOVING:
                self._follow(func, name, args, kwargs, result)
            elif name in _FRESH:
                pass  # a constant: a data argument of a later op that is not mapped counts as one
            elif ops.is_inplace_name(name) and args and isinstance(args[0], Tensor):
                # ids.add_(1): the values stay where they were, changed; ids.fill_(0): constants
                constant = name in ("zero_", "fill_") and not self._touches(args[1:])
                self._mark(args[0], CONSTANT if constant else CHANGED)
            else:
                for value in _outputs(result):
                    if _is_ids(value) and not any(value is a for a in args):  # (not an op that returns its input)
                        self._mark(value, CHANGED)
        return result

    def _touches(self, args: tuple[Any, ...]) -> bool:
        """Whether any of ``args`` (or of a list among them) is mapped: once per op the model runs, kept quick (a
        mapped tensor is kept alive in the maps, so its id is its own)."""
        maps = self._maps
        for value in args:
            if type(value) is list or type(value) is tuple:
                if any(id(v) in maps for v in value):
                    return True
            elif id(value) in maps:
                return True
        return False

    def _follow(self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                result: Any) -> None:
        """Run ``func`` on the position maps of its data arguments: the results' maps, or in place the target's."""
        at = _data_at(name, args)
        data = [(i, v) for i, v in enumerate(args) if i in at] + [(k, v) for k, v in kwargs.items() if k in _DATA_KEYS]
        values = [t for _, v in data for t in (v if isinstance(v, (list, tuple)) else (v,))]
        if not any(isinstance(v, Tensor) and self.positions(v) is not None for v in values):
            return  # ids used as an index or mask (table[ids], x.masked_fill(ids == 0, v)): nothing of theirs moves
        inplace = ops.is_inplace_name(name)
        if inplace and isinstance(args[0], Tensor) and self.positions(args[0]) is None:
            self._mark(args[0], CONSTANT)  # shifted = ids.new_zeros(...); shifted[:, 1:] = ids[:, :-1]
        if name in _CASTS:
            moved: Any = self._map_of(args[0]).to(result.device) if isinstance(result, Tensor) else None
        else:
            mapped = list(args)
            for i, value in data:
                mapped_value = [self._map_of(t) for t in value] if isinstance(value, (list, tuple)) \
                    else self._map_of(value)
                if isinstance(i, int):
                    mapped[i] = mapped_value
                else:
                    kwargs = {**kwargs, i: mapped_value}
            try:
                moved = func(*mapped, **kwargs)
            except (RuntimeError, TypeError, ValueError, IndexError):  # a form the maps cannot take: changed ids
                for value in (args[0],) if inplace else _outputs(result):
                    self._mark(value, CHANGED)
                return
        if inplace:
            return  # the op changed the target's map (a view of its base's map, if it is a view) alike
        for value, positions in zip(_outputs(result), _outputs(moved)):
            if _is_ids(value):
                if isinstance(positions, Tensor) and positions.shape == value.shape and _is_ids(positions):
                    self._maps[id(value)] = (value, positions)
                else:
                    self._mark(value, CHANGED)

    def _map_of(self, value: Any) -> Any:
        """A data argument's positions: its map, or constants for a tensor or number not computed from the ids."""
        positions = self.positions(value) if isinstance(value, Tensor) else None
        if positions is not None:
            return positions
        if isinstance(value, Tensor):
            return torch.full(value.shape, CONSTANT, dtype=torch.long, device=value.device)
        return CONSTANT if isinstance(value, (int, float, bool)) else value

    def _mark(self, tensor: Tensor, code: int) -> None:
        """Set every position of ``tensor`` to ``code``, in place in its map (and its base's, for a view map)."""
        if not _is_ids(tensor):
            return
        positions = self.positions(tensor)
        if positions is None:
            self._maps[id(tensor)] = (tensor, torch.full(tensor.shape, code, dtype=torch.long, device=tensor.device))
        else:
            positions.fill_(code)
        base = tensor._base
        if code == CHANGED and base is not None and self.positions(base) is not None and positions is None:
            self._mark(base, CHANGED)  # a view made by an op not followed, changed in place: its base changed


def _data_at(name: str, args: tuple[Any, ...]) -> frozenset[int]:
    """The positions of an op's data arguments: the values it moves (not an index, a mask, a dim or a size)."""
    if name == "where":  # torch.where(condition, input, other) or Tensor.where(self, condition, other)
        return frozenset({1, 2} if ops.condition_first(args) else {0, 2})
    return frozenset({0, _VALUE_AT[name]} if name in _VALUE_AT else {0})


def _outputs(result: Any) -> tuple[Any, ...]:
    return tuple(result) if isinstance(result, (list, tuple)) else (result,)
