"""``Value``: the base of the value types every command loads. Pure, stdlib only.

A ``Value`` is what ``@dataclass(frozen=True, slots=True, kw_only=True)``
makes (STYLE 5.2): its fields are its ``__slots__``; it is frozen (setting
or deleting a field raises AttributeError), equal to another of its class
with equal fields, hashable by them, shown as ``Name(field=value, ...)``,
and its ``__init__`` checks its invariants only. What differs is the cost
of making the class: a dataclass compiles its methods from source at import
(about 1 ms a class on the 2-core reference VM) and ``import dataclasses``
brings inspect, ast and dis (13 ms), while a whole ``check`` or ``explain``
has 60 ms of CPU (issue 14). So the types loaded by every command (the
policy core, the config file) and by ``guest add`` (guests, their record,
the feature plans) are Values; types only some commands load stay
dataclasses.

A subclass
- lists its fields, in order, in ``__slots__`` and annotates them;
- writes ``__init__``, keyword-only as STYLE 5.2's dataclasses are (the
  few that were positional stay so: ``PortRange(22, 22)``, ``NetHost(net)``),
  setting each field with ``init_field(self, name, value)``;
- may set ``COMPARED``, the fields that take part in ``==`` (the others,
  such as a callable, do not; default: all), ``HASHED``, those of them that
  take part in ``hash`` (default: ``COMPARED``; a mapping cannot), and
  ``HIDDEN``, the fields ``repr`` leaves out.

``replace(value, **changes)`` is ``dataclasses.replace`` for a Value and
for a dataclass alike (modules hold both while some types stay
dataclasses): a new value with some fields changed, made (and checked) by
its ``__init__``. A Value is never copied: ``copy.copy`` and
``copy.deepcopy`` give it back itself, as nothing in it can change; pickling
makes it anew from its fields.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, ClassVar, TypeVar

init_field = object.__setattr__
"""Sets a field of a Value being made (its ``__init__`` only)."""

V = TypeVar("V")


def _key_getter(names: tuple[str, ...]) -> Any:
    """A function from a Value to the tuple of its fields ``names``."""
    if len(names) == 1:
        (name,) = names
        return lambda value: (getattr(value, name),)
    if names:
        return attrgetter(*names)
    return lambda value: ()


class Value:
    __slots__ = ()
    COMPARED: ClassVar[tuple[str, ...]]
    HASHED: ClassVar[tuple[str, ...]]
    HIDDEN: ClassVar[tuple[str, ...]] = ()
    _key: ClassVar[Any]
    _hash_key: ClassVar[Any]
    _shown: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = tuple(cls.__slots__)
        cls.COMPARED = cls.__dict__.get("COMPARED", fields)
        cls.HASHED = cls.__dict__.get("HASHED", cls.COMPARED)
        key = _key_getter(cls.COMPARED)
        cls._key = staticmethod(key)
        cls._hash_key = staticmethod(key if cls.HASHED == cls.COMPARED else _key_getter(cls.HASHED))
        cls._shown = tuple(name for name in fields if name not in cls.HIDDEN)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key(self) == self._key(other)

    def __hash__(self) -> int:
        return hash(self._hash_key(self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._shown)
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {self.__class__.__name__}: values are frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {self.__class__.__name__}: values are frozen")

    def __reduce__(self) -> tuple[Any, ...]:
        return _remake, (self.__class__, {name: getattr(self, name) for name in self.__slots__})

    def __copy__(self) -> Value:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Value:
        return self


def _remake(cls: type[V], fields: dict[str, Any]) -> V:
    """A pickled Value, made again (and checked) by its ``__init__``."""
    return cls(**fields)


def replace(value: V, **changes: Any) -> V:
    """``value`` (a Value or a dataclass) with the fields in ``changes`` changed."""
    if not isinstance(value, Value):
        import dataclasses  # (imported already by whoever made the dataclass)

        return dataclasses.replace(value, **changes)
    fields = {name: getattr(value, name) for name in value.__slots__}
    unknown = changes.keys() - fields.keys()
    if unknown:
        raise TypeError(f"{value.__class__.__name__} has no field {', '.join(sorted(unknown))}")
    return value.__class__(**(fields | changes))
