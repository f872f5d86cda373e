"""The methods by name: `register` (a class decorator) and `get_detector`.

A method inside the package is also named in `config.METHODS` (the CLI lists those without
importing torch) and in `config.READ_BY` for the shared settings it reads; one from outside
(a plugin) is registered by its own module, which must be imported before a run of it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomaly.detectors.base import Detector

REGISTRY: dict[str, type[Detector]] = {}


# What an unknown method's error adds: a run of a method from outside the package loads only
# after the module that registers it was imported (README, "Adding a method").
PLUGIN_HINT = (
    "a method of your own is known only once the module that registers it "
    "(`anomaly.register`) is imported, before the run is loaded"
)


def register(name: str, reads=None) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: make a detector available by name to notebooks, CLI and benchmark.

    `reads`: for a method from outside the package, the shared settings it reads of those only
    some methods read (`config.READ_BY`: epochs, lr, score_topk, ...), so that the CLI warns
    about the others when they are given for it; without it, no setting is said to be ignored.
    A method inside the package is named in `config.METHODS` and `config.READ_BY` instead.
    """

    def wrap(cls: type[Detector]) -> type[Detector]:
        if reads is not None:  # when the class is registered, not when the decorator is made
            declare_reads(name, reads)
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class UnknownMethod(KeyError, ValueError):
    """A method name no detector is registered under."""

    def __str__(self) -> str:  # a KeyError's would show its quotes
        return str(self.args[0]) if self.args else ""


def get_detector(name: str) -> type[Detector]:
    from anomaly import detectors  # noqa: F401  (importing registers every method)

    if name not in REGISTRY:  # a KeyError that is a ValueError too, as Config.for_method's
        import difflib

        near = difflib.get_close_matches(str(name), REGISTRY, n=1)
        raise UnknownMethod(
            f"Unknown method {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
            f"choose one of: {', '.join(sorted(REGISTRY))} ({PLUGIN_HINT})"
        )
    return REGISTRY[name]


def declare_reads(method: str, names) -> None:
    """A method from outside the package (`anomaly.register(name, reads=...)`) reads these of
    the settings in `config.READ_BY`; `config.ignored_by` then names the others for it."""
    from anomaly.config import _DECLARED, METHODS, READ_BY

    if method in METHODS:
        raise ValueError(
            f"register({method!r}, reads=...): {method!r} is a method of the package, whose "
            "settings are listed in anomaly.config.READ_BY; register yours under another name"
        )
    names = [names] if isinstance(names, str) else list(names)
    unknown = sorted(set(names) - set(READ_BY))
    if unknown:
        raise ValueError(
            f"register({method!r}, reads=...): {', '.join(map(repr, unknown))} "
            f"{'is not a setting' if len(unknown) == 1 else 'are not settings'} that only some "
            f"methods read; those are: {', '.join(sorted(READ_BY))} (every other is read by all)"
        )
    for name in names:
        if method not in READ_BY[name]:
            READ_BY[name] = (*READ_BY[name], method)
    _DECLARED.add(method)
