"""Loaded experts, least recently used first out: a query loads only the experts it needs.

Stacked states (the input of the compiled ensemble call) are cached per expert set too, so a
stream of queries routed to the same experts stacks them once.
"""

from __future__ import annotations

from collections import OrderedDict

from flax import nnx

from experts.registry import Registry
from routing.ensemble import stack_states
from xelm.model import Encoder


class ExpertPool:
    def __init__(self, registry: Registry, cache_size: int = 8, stack_cache_size: int = 4):
        self.registry, self.cache_size, self.stack_cache_size = registry, cache_size, stack_cache_size
        self._models: OrderedDict[str, Encoder] = OrderedDict()
        self._pinned: dict[str, Encoder] = {}
        self._stacks: OrderedDict[tuple[str, ...], tuple] = OrderedDict()
        self.loads = 0  # experts read from disk so far (what the cache saves)

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> Encoder:
        """The expert's encoder, loaded on first use."""
        if name in self._pinned:
            return self._pinned[name]
        if name in self._models:
            self._models.move_to_end(name)
        else:
            self._models[name] = self.registry.load(name)
            self.loads += 1
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
        return self._models[name]

    def add(self, name: str, model: Encoder) -> None:
        """Keep a model that is not in the registry (the base, the dense baseline) under ``name``,
        so it can be stacked with the experts; it is never evicted."""
        self._pinned[name] = model

    def stacked(self, names: tuple[str, ...]):
        """(graphdef, state with a leading expert axis) for ``names``, in that order."""
        names = tuple(names)
        if names in self._stacks:
            self._stacks.move_to_end(names)
        else:
            splits = [nnx.split(self.get(n)) for n in names]
            self._stacks[names] = (splits[0][0], stack_states([s for _, s in splits]))
            while len(self._stacks) > self.stack_cache_size:
                self._stacks.popitem(last=False)
        return self._stacks[names]
