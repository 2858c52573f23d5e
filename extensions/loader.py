"""APP_EXTENSIONS: import each module once at start-up and collect the names it defines."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import tornado.routing

from extensions.app import AppContext
from extensions.authorize import Step
from extensions.events import HandlerSpec
from extensions.routes import RouteError, RoutesFactory, checked_rule
from ground.config import ConfigError

Setup = Callable[[AppContext], "Awaitable[None] | None"]

_EVENT_NAME = re.compile(r"[a-z0-9_]+")


class ExtensionError(ConfigError):
    """An extension cannot be used as it is: one line at start-up, exit code 2."""


@dataclass(frozen=True)
class Extensions:
    """What the modules named in APP_EXTENSIONS define, in their order."""

    modules: tuple[str, ...] = ()
    authorize: tuple[Step, ...] = ()
    event_handlers: tuple[HandlerSpec, ...] = ()
    routes_factories: tuple[tuple[str, RoutesFactory], ...] = ()
    setups: tuple[tuple[str, Setup], ...] = ()

    def routes(self, app: AppContext, taken: list[str]) -> list[tornado.routing.Rule]:
        """Every module's routes, checked (server.py tracks their handlers for graceful shutdown).
        `taken`: the patterns served already; a route they would shadow is an error."""
        rules: list[tornado.routing.Rule] = []
        served = [re.compile(pattern if pattern.endswith("$") else pattern + "$") for pattern in taken]
        for source, factory in self.routes_factories:
            try:
                listed = factory(app)
            except Exception as error:  # the module's own code failed: one line, where
                raise ExtensionError(f"{source}.routes(app) failed: {_where(error)}") from None
            if not isinstance(listed, (list, tuple)):
                raise ExtensionError(
                    f"{source}.routes(app) must return a list of routes, not {type(listed).__name__}"
                )
            for route in listed:
                try:
                    rule = checked_rule(route)
                except RouteError as error:
                    raise ExtensionError(f"{source}.routes: {error}") from None
                regex: re.Pattern[str] = rule.matcher.regex  # type: ignore[attr-defined]
                path = _literal_path(regex.pattern)
                if any(regex.pattern == other.pattern or (path and other.match(path)) for other in served):
                    owner = "the server or another extension"
                    raise ExtensionError(f"{source}.routes: {regex.pattern!r} is already served by {owner}")
                served.append(regex)
                rules.append(rule)
        return rules

    async def run_setups(self, app: AppContext) -> None:
        for source, setup in self.setups:
            try:
                result = setup(app)
                if inspect.isawaitable(result):
                    await result
            except ConfigError:
                raise
            except Exception as error:
                raise ExtensionError(f"{source}.setup failed: {_where(error)}") from None


def _literal_path(pattern: str) -> str:
    """The one path a pattern without wildcards matches ("" when it has any)."""
    body = pattern.removesuffix("$")
    if re.search(r"(?<!\\)[.^$*+?{}\[\]()|]|\\[A-Za-z0-9]", body):
        return ""
    return re.sub(r"\\(.)", r"\1", body)


def load_extensions(names: tuple[str, ...] | list[str]) -> Extensions:
    """Import the modules; any problem is an ExtensionError naming the module and the fix."""
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # after everything else: never shadows an installed module
    authorize: list[Step] = []
    handlers: list[HandlerSpec] = []
    routes: list[tuple[str, RoutesFactory]] = []
    setups: list[tuple[str, Setup]] = []
    for name in names:
        module = _import(name)
        if hasattr(module, "authorize"):
            authorize.append(Step(name, _function(module, "authorize", 2, "(request, grant)")))
        if hasattr(module, "routes"):
            routes.append((name, _function(module, "routes", 1, "(app)")))
        if hasattr(module, "setup"):
            setups.append((name, _function(module, "setup", 1, "(app)")))
        for attribute in sorted(vars(module)):
            if attribute.startswith("on_") and callable(getattr(module, attribute)):
                event = attribute.removeprefix("on_")
                if event != "event" and not _EVENT_NAME.fullmatch(event):
                    raise ExtensionError(
                        f"{name}.{attribute}: on_<event> needs a LiveKit event name (a-z, 0-9, _)"
                    )
                function = _function(module, attribute, 2, "(event, context)")
                handlers.append(
                    HandlerSpec(f"{name}:{attribute}", None if event == "event" else event, function)
                )
    return Extensions(tuple(names), tuple(authorize), tuple(handlers), tuple(routes), tuple(setups))


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if error.name == name or (error.name and name.startswith(error.name + ".")):
            where = f"installed, on PYTHONPATH or in {os.getcwd()}"
            raise ExtensionError(f"APP_EXTENSIONS: no module named {name!r} (is it {where}?)") from None
        raise ExtensionError(f"APP_EXTENSIONS: {name} could not be imported: {_where(error)}") from None
    except Exception as error:  # the module's own code failed: say where, in one line
        raise ExtensionError(f"APP_EXTENSIONS: {name} could not be imported: {_where(error)}") from None


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    if isinstance(error, SyntaxError):
        place = f" ({error.filename}:{error.lineno})"
        return f"SyntaxError: {error.msg}{place}"
    return f"{type(error).__name__}: {error}{place}"


def _function(module: ModuleType, attribute: str, arity: int, parameters: str) -> Any:
    function = getattr(module, attribute)
    where = f"{module.__name__}.{attribute}"
    if not callable(function):
        raise ExtensionError(f"{where} must be a function {attribute}{parameters}")
    try:
        inspect.signature(function).bind(*range(arity))
    except TypeError:
        raise ExtensionError(f"{where} must take {arity} argument(s): {attribute}{parameters}") from None
    except ValueError:
        pass  # a builtin without a signature: trust it
    return function
