"""Walk the objects reachable from the sans-IO core; report whatever is not the core's own.

The core must never call something the runtime injected (issue #11: the policy held a
`refresh_hosts()` set by the runtime, so a netlink recv and a pyroute2 dump ran inside
`Stack.on_frame`). Imports cannot show such a callable: it arrives as a value. So this
walks values, breadth first from the given roots (the stack object, the core's classes,
the core's module globals), and reports, with the path that reaches it:

- a function whose `__module__` is not a core module (a runtime method, a lambda or a
  closure written in the runtime, app or a test);
- a builtin function of a module outside the whitelist (`time.monotonic`, `os.read`,
  `select.epoll.poll` via its `__self__`) and the builtins that do I/O (`open`, `print`);
- an object, class or module defined outside the core and the whitelist: an `EventLoop`,
  a `HostStreams`, a `socket.socket`, a `select.epoll`, the `os` module itself.

What it follows: instance attributes (`vars()` and every `__slots__` of the MRO), the
contents of dicts (keys and values), lists, tuples, sets, frozensets, deques, a
defaultdict's `default_factory`, ChainMap maps, a memoryview's object; a bound method's
`__self__` and `__func__`; a function's closure cells, defaults, keyword defaults and own
attributes; staticmethod/classmethod/property/partial/cached_property internals; weak
references' referents; a suspended generator's locals; and, for every class defined in
the core (of an object reached, or its bases), the class `__dict__`, so a method patched
onto a core class is seen too. It does not follow a function's `__globals__` (the core's
module globals are roots of their own) nor the insides of objects of whitelisted stdlib
types that only lead out of the core's data (a logger's handlers and manager).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Final

# Modules outside the core whose classes, instances, callables and module objects the core
# may hold: data and pure computation, nothing that reads a clock, an fd or randomness.
# Exact names, no prefixes (but see GENERATED_PREFIXES).
DATA_MODULES: Final = frozenset({
    "builtins",  # int, str, bytes, dict, ...; the builtins that do I/O are refused by name
    "__future__",  # `from __future__ import annotations` leaves a _Feature in each module
    "abc", "_abc", "collections.abc", "typing", "types",  # ABCs, Protocols, aliases, unions
    "collections", "_collections", "heapq",  # deque, Counter, defaultdict, a NamedTuple's fields
    "dataclasses", "enum", "functools",  # fields, members, partials of core methods
    "ipaddress", "struct", "_struct", "re", "errno",  # addresses, codecs, patterns, constants
    "hashlib", "_hashlib", "_blake2",  # TCP's initial sequence numbers, keyed by a secret
    "logging",  # loggers are held but not walked into (their handlers write, by design)
})
# Functions the stdlib generates into a module of their own name: a NamedTuple's __new__.
GENERATED_PREFIXES: Final = ("namedtuple_",)
# Builtins that do I/O or run code from text: never a value the core may hold.
IO_BUILTINS: Final = frozenset({"open", "print", "input", "exec", "eval", "compile",
                                "__import__", "breakpoint"})
# Whitelisted types that are checked but not walked into.
OPAQUE: Final = (logging.Logger, logging.LoggerAdapter, logging.Manager, logging.PlaceHolder)
_SCALARS: Final = (type(None), bool, int, float, complex, str, bytes, range, slice,
                   type(Ellipsis), type(NotImplemented))
_DESCRIPTORS: Final = (types.WrapperDescriptorType, types.MethodDescriptorType,
                       types.ClassMethodDescriptorType, types.GetSetDescriptorType,
                       types.MemberDescriptorType)
_MAX_OBJECTS: Final = 2_000_000


@dataclasses.dataclass(frozen=True)
class Finding:
    path: str  # how the object is reached from the roots
    what: str  # what it is and why it does not belong

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclasses.dataclass
class Report:
    findings: list[Finding]
    visited: int  # distinct objects walked
    whitelist_hits: collections.Counter[str]  # non-core modules met, by objects met

    def paths(self) -> set[str]:
        return {finding.path for finding in self.findings}


def _name(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."


def _slot_names(cls: type) -> Iterator[str]:
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            if slot.startswith("__") and not slot.endswith("__"):
                slot = f"_{klass.__name__.lstrip('_')}{slot}"  # name mangling
            yield slot


class CoreGraph:
    """One walk: `walk(roots)` with *is_core* telling the core's module names."""

    def __init__(self, is_core: Callable[[str], bool]) -> None:
        self.is_core = is_core

    def module_ok(self, module: str | None) -> bool:
        return module is not None and (self.is_core(module) or module in DATA_MODULES
                                       or module.startswith(GENERATED_PREFIXES))

    def walk(self, roots: Iterable[tuple[str, object]]) -> Report:
        self._findings: list[Finding] = []
        self._hits: collections.Counter[str] = collections.Counter()
        self._seen: set[int] = set()
        self._keep: list[object] = []  # ids stay unique while the walk runs
        self._queue: collections.deque[tuple[str, object]] = collections.deque()
        for path, obj in roots:
            self._push(path, obj)
        while self._queue:
            assert len(self._seen) < _MAX_OBJECTS, "object graph larger than expected"
            self._visit(*self._queue.popleft())
        return Report(self._findings, len(self._seen), self._hits)

    # --- the walk ----------------------------------------------------------------------------

    def _push(self, path: str, obj: object) -> None:
        if isinstance(obj, _SCALARS) or id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        self._keep.append(obj)
        self._queue.append((path, obj))

    def _bad(self, path: str, what: str) -> None:
        self._findings.append(Finding(path, what))

    def _check_module(self, module: str | None) -> bool:
        if module is not None and not self.is_core(module) and self.module_ok(module):
            generated = module.startswith(GENERATED_PREFIXES)
            self._hits[module.split("_")[0] + "_*" if generated else module] += 1
        return self.module_ok(module)

    def _visit(self, path: str, obj: object) -> None:
        if isinstance(obj, types.ModuleType):
            if not self._check_module(obj.__name__):
                self._bad(path, f"module {obj.__name__}")
            return  # a core module's globals are a root of their own
        if isinstance(obj, type):
            self._visit_class(path, obj)
            return
        cls = type(obj)
        if not self._check_module(cls.__module__):
            self._bad(path, f"object of {_name(cls)} (outside the core)")
            return
        if isinstance(obj, types.FunctionType):
            self._visit_function(path, obj)
            return
        if isinstance(obj, types.BuiltinFunctionType):  # also builtin methods
            self._visit_builtin(path, obj)
            return
        if isinstance(obj, types.MethodType) and not self._method_ok(path, obj):
            return
        self._push(f"{_name(cls)}", cls)
        if isinstance(obj, OPAQUE):
            return
        self._follow(path, obj)

    def _visit_class(self, path: str, cls: type) -> None:
        if not self._check_module(cls.__module__):
            self._bad(path, f"class {_name(cls)} (outside the core)")
            return
        if not self._check_module(type(cls).__module__):
            self._bad(path, f"class {_name(cls)} of metaclass {_name(type(cls))} "
                            f"(outside the core)")
            return
        if not self.is_core(cls.__module__):
            return  # a stdlib class: its code is not the core's to check
        for base in cls.__bases__:
            self._push(_name(base), base)
        for key, value in vars(cls).items():  # named where the class is defined
            self._push(f"{_name(cls)}.{key}", value)

    def _visit_function(self, path: str, fn: types.FunctionType) -> None:
        if not self.module_ok(fn.__module__):
            self._bad(path, f"function {_name(fn)} (outside the core)")
            return
        self._check_module(fn.__module__)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self._push(f"{path}.<closure {name}>", value)
        for i, default in enumerate(fn.__defaults__ or ()):
            self._push(f"{path}.__defaults__[{i}]", default)
        for key, default in (fn.__kwdefaults__ or {}).items():
            self._push(f"{path}.__kwdefaults__[{key!r}]", default)
        for key, value in vars(fn).items():
            self._push(f"{path}.{key}", value)

    def _method_ok(self, path: str, method: types.MethodType) -> bool:
        """A bound method written outside the core is reported as itself, at its path."""
        func, owner = method.__func__, method.__self__
        if isinstance(func, types.FunctionType) and not self.module_ok(func.__module__):
            self._bad(path, f"method {_name(func)} bound to a {_name(type(owner))} "
                            f"(outside the core)")
            return False
        return True

    def _visit_builtin(self, path: str, fn: types.BuiltinFunctionType) -> None:
        owner = fn.__self__
        if owner is None and fn.__module__ is None and path.endswith(f".{fn.__name__}.__func__"):
            return  # a compiled (mypyc) static method, found in its own core class's dict
        if owner is None or isinstance(owner, types.ModuleType):  # a module-level builtin
            module = fn.__module__ or getattr(owner, "__name__", None)
            if not self._check_module(module) or (module == "builtins"
                                                  and fn.__name__ in IO_BUILTINS):
                self._bad(path, f"builtin {module}.{fn.__name__} (outside the core)")
            return
        owner_cls = owner if isinstance(owner, type) else type(owner)
        if not self.module_ok(owner_cls.__module__):
            self._bad(path, f"builtin method {fn.__name__} of a {_name(owner_cls)} "
                            f"(outside the core)")
            return
        self._push(f"{path}.__self__", owner)  # a bound builtin method: whose is it?

    def _follow(self, path: str, obj: object) -> None:
        """Everything *obj* holds: attributes, contents, and the parts of callables."""
        if isinstance(obj, types.MethodType):
            self._push(f"{path}.__func__", obj.__func__)
            self._push(f"{path}.__self__", obj.__self__)
        elif isinstance(obj, types.MethodWrapperType):
            self._push(f"{path}.__self__", obj.__self__)
        elif isinstance(obj, _DESCRIPTORS):
            self._push(f"{path}.__objclass__", obj.__objclass__)
        elif isinstance(obj, (staticmethod, classmethod)):
            self._push(f"{path}.__func__", obj.__func__)
        elif isinstance(obj, property):
            for part in ("fget", "fset", "fdel"):
                self._push(f"{path}.{part}", getattr(obj, part))
        elif isinstance(obj, functools.partial):
            self._push(f"{path}.func", obj.func)
            self._push(f"{path}.args", obj.args)
            self._push(f"{path}.keywords", obj.keywords)
        elif isinstance(obj, functools.cached_property):
            self._push(f"{path}.func", obj.func)
        elif isinstance(obj, weakref.ref):
            self._push(f"{path}()", obj())
        elif isinstance(obj, types.CellType):
            try:
                self._push(f"{path}.cell_contents", obj.cell_contents)
            except ValueError:
                pass
        elif isinstance(obj, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
            self._follow_generator(path, obj)
        elif isinstance(obj, types.FrameType):
            self._bad(path, "a frame object")
        self._follow_contents(path, obj)
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                self._push(f"{path}.{key}", value)
        for slot in _slot_names(type(obj)):
            value = getattr(obj, slot, _Missing)
            if value is not _Missing:
                self._push(f"{path}.{slot}", value)

    def _follow_contents(self, path: str, obj: object) -> None:
        if isinstance(obj, (dict, types.MappingProxyType)):
            for key, value in list(obj.items()):
                self._push(f"{path}[{_short(key)}] (key)", key)
                self._push(f"{path}[{_short(key)}]", value)
            if isinstance(obj, collections.defaultdict):
                self._push(f"{path}.default_factory", obj.default_factory)
        elif isinstance(obj, (list, tuple, collections.deque)):
            for i, item in enumerate(list(obj)):
                self._push(f"{path}[{i}]", item)
        elif isinstance(obj, (set, frozenset)):
            for item in list(obj):
                self._push(f"{path}{{{_short(item)}}}", item)
        elif isinstance(obj, collections.ChainMap):
            self._push(f"{path}.maps", obj.maps)
        elif isinstance(obj, memoryview):
            self._push(f"{path}.obj", obj.obj)

    def _follow_generator(self, path: str, gen: object) -> None:
        frame = getattr(gen, "gi_frame", None) or getattr(gen, "cr_frame", None) \
            or getattr(gen, "ag_frame", None)
        if frame is None:
            return  # finished: holds nothing
        module = frame.f_globals.get("__name__")
        if not self._check_module(module):
            self._bad(path, f"generator of {module} (outside the core)")
            return
        for name, value in frame.f_locals.items():
            self._push(f"{path}.<local {name}>", value)


class _Missing:
    pass
