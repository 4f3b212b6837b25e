"""How a setting is declared: ``name: Annotated[type, Parser(parse)] = setting(default, text)``
on a :class:`DeclaredSettings` subclass, which parses every value it is given with the
setting's parser and nothing else.

This used to be pydantic-settings' ``BaseSettings`` with a ``PlainValidator`` per field. Every
setting already had a parser of its own (the syntax is stricter than pydantic's lax mode and
friendlier than its strict one), files were read by ``tomllib`` and python-dotenv, and the layers
were stacked by :mod:`.loading`; what pydantic added was some 11 MiB in every process (pydantic,
its core and the settings' validator), for one call at start-up.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

__all__ = [
    "DeclaredSettings",
    "Field",
    "InvalidSetting",
    "Parser",
    "SettingsError",
    "cross_check",
    "setting",
]


class SettingsError(ValueError):
    """A setting is missing its file, unknown or malformed. ``str(e)`` is the one line to print."""


class InvalidSetting(SettingsError):
    """A value its parser refused (``name`` set), or a check across settings that failed
    (``name`` None: the message names the setting to change)."""

    def __init__(self, name: str | None, message: str) -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.message = message


@dataclass(frozen=True, slots=True)
class Parser:
    """The parser of a setting's values, in its ``Annotated`` type: raw value (text from
    ``.env`` or the environment, a native TOML value, or an already typed one) to typed value,
    or ``ValueError("expected ..., got ...")``. It alone decides: nothing is coerced around it."""

    parse: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Declaration:
    default: str
    description: str
    secret: bool


def setting(default: str, description: str, *, secret: bool = False) -> Any:
    """Declare a setting.

    ``default`` is text as it would appear in ``.env`` ("" for unset): the setting's parser
    reads it like any other value, so built-in defaults obey the same rules as user values, and
    the README shows them as a user would write them. Typed ``Any`` because the text is not the
    setting's type until it is parsed. ``secret``: left out of ``repr``.
    """
    return _Declaration(default, description, secret)


def cross_check(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """Mark a method as a check across settings, run once every value is parsed; it raises
    ``ValueError`` with a message that names the setting to change."""
    setattr(check, _CHECK_MARK, True)
    return check


_CHECK_MARK: Final = "__cross_check__"


@dataclass(frozen=True, slots=True)
class Field:
    """One declared setting."""

    attribute: str  # "port"
    name: str  # "PORT": the config.toml key and the environment variable
    type: Any  # int, Path, ...: what the parser gives
    parse: Callable[[Any], Any]
    default: str
    description: str
    secret: bool


class DeclaredSettings:
    """Settings declared as annotated class attributes (see the module documentation).

    ``Cls(**values)`` parses each given value (by attribute, ``port=80``, or by name,
    ``PORT=80``) and each default; :meth:`replace` sets typed values as they are. Instances are
    frozen, compare and hash by their values, and leave secrets out of their ``repr``.
    """

    FIELDS: ClassVar[Mapping[str, Field]] = {}
    """By attribute, in declaration order."""
    _BY_NAME: ClassVar[Mapping[str, Field]] = {}
    _CHECKS: ClassVar[tuple[Callable[[Any], None], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields: dict[str, Field] = {}
        for attribute, declared in list(vars(cls).items()):
            if not isinstance(declared, _Declaration):
                continue
            hint = hints[attribute]
            parsers = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Parser)]
            if len(parsers) != 1:
                raise TypeError(f"{cls.__name__}.{attribute}: needs Annotated[type, Parser(...)]")
            fields[attribute] = Field(
                attribute=attribute,
                name=attribute.upper(),
                type=hint.__origin__,
                parse=parsers[0].parse,
                default=declared.default,
                description=declared.description,
                secret=declared.secret,
            )
            delattr(cls, attribute)  # instances hold the values
        cls.FIELDS = fields
        cls._BY_NAME = {field.name: field for field in fields.values()}
        cls._CHECKS = tuple(v for v in vars(cls).values() if getattr(v, _CHECK_MARK, False))

    def __init__(self, **values: object) -> None:
        given: dict[str, object] = {}
        for key, value in values.items():
            field = self.FIELDS.get(key) or self._BY_NAME.get(key)
            if field is None:
                raise TypeError(f"{type(self).__name__}() got an unknown setting {key!r}")
            given[field.attribute] = value
        for field in self.FIELDS.values():
            raw = given.get(field.attribute, field.default)
            try:
                value = field.parse(raw)
            except ValueError as error:
                raise InvalidSetting(field.name, str(error)) from None
            object.__setattr__(self, field.attribute, value)
        self._check()

    def _check(self) -> None:
        for check in self._CHECKS:
            try:
                check(self)
            except ValueError as error:
                raise InvalidSetting(None, str(error)) from None

    def replace(self, **typed: object) -> Self:
        """A copy with these attributes set as given, without parsing (tests and the benchmark
        hand over values of the right type already)."""
        unknown = sorted(typed.keys() - self.FIELDS.keys())
        if unknown:
            raise TypeError(f"{type(self).__name__}.replace() got unknown settings: {unknown}")
        copy = object.__new__(type(self))
        for attribute in self.FIELDS:
            object.__setattr__(copy, attribute, typed.get(attribute, getattr(self, attribute)))
        return copy

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, attribute) for attribute in self.FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, DeclaredSettings)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{field.attribute}={getattr(self, field.attribute)!r}"
            for field in self.FIELDS.values()
            if not field.secret
        )
        return f"{type(self).__name__}({shown})"
