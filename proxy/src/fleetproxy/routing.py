"""Rule matching, pure: a request's attributes in, a backend name out.

Rules are compiled once per configuration into closures.  A compiled router is
called with a *request view*: any object with

- ``method`` (upper case, str or bytes), ``path`` (str, without the query string),
- ``host`` (str, lower case, without port; "" when absent),
- ``header(name)`` returning the first value of a header or ``None``,
- ``src`` (an ``ipaddress`` address of the client),
- ``sni`` (str or ``None``; TCP mode, from the TLS ClientHello).

Only the attributes a rule actually uses are read, so views may compute them
lazily.  The first rule that matches wins; keys inside one ``if`` are ANDed,
``any`` is an OR list and ``not`` negates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

from .config import Condition, HeaderCondition, Rule

Predicate = Callable[[Any], bool]


def host_matcher(patterns: Sequence[str]) -> Predicate:
    """Exact names and ``*.example.com`` wildcards (one or more labels deep)."""
    exact = frozenset(p for p in patterns if not p.startswith("*."))
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def match(req: Any) -> bool:
        host = req.host
        return host in exact or (bool(suffixes) and host.endswith(suffixes) and not host.startswith("."))

    return match


def _header(cond: HeaderCondition) -> Predicate:
    name = cond.name
    if cond.value is not None:
        expected = cond.value
        return lambda req: req.header(name) == expected
    if cond.regex is not None:
        search = re.compile(cond.regex).search
        return lambda req: (v := req.header(name)) is not None and search(v) is not None
    if cond.present is False:
        return lambda req: req.header(name) is None
    return lambda req: req.header(name) is not None


def _src(cidrs: Sequence[str]) -> Predicate:
    nets = [ipaddress.ip_network(c) for c in cidrs]

    def match(req: Any) -> bool:
        addr = req.src
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in nets)

    return match


def compile_condition(cond: Condition) -> Predicate:
    tests: list[Predicate] = []
    if cond.method is not None:
        # The HTTP data path's view holds the method as the raw bytes of the request line.
        methods = frozenset(cond.method) | frozenset(m.encode("ascii") for m in cond.method)
        tests.append(lambda req: req.method in methods)
    if cond.path is not None:
        paths = frozenset(cond.path)
        tests.append(lambda req: req.path in paths)
    if cond.path_prefix is not None:
        prefixes = tuple(cond.path_prefix)
        tests.append(lambda req: req.path.startswith(prefixes))
    if cond.path_regex is not None:
        search = re.compile(cond.path_regex).search
        tests.append(lambda req: search(req.path) is not None)
    if cond.host is not None:
        tests.append(host_matcher(cond.host))
    if cond.sni is not None:
        sni_match = host_matcher(cond.sni)

        def has_sni(req: Any) -> bool:
            return req.sni is not None and sni_match(_SniView(req.sni))

        tests.append(has_sni)
    if cond.header is not None:
        tests.append(_header(cond.header))
    if cond.src is not None:
        tests.append(_src(cond.src))
    if cond.not_ is not None:
        inner = compile_condition(cond.not_)
        tests.append(lambda req: not inner(req))
    if cond.any is not None:
        alternatives = [compile_condition(c) for c in cond.any]
        tests.append(lambda req: any(t(req) for t in alternatives))
    if len(tests) == 1:
        return tests[0]
    return lambda req: all(t(req) for t in tests)


class _SniView:
    __slots__ = ("host",)

    def __init__(self, sni: str) -> None:
        self.host = sni


def compile_rules(rules: Sequence[Rule], default: str | None) -> Callable[[Any], str | None]:
    """A function from a request view to the backend name (or ``default``)."""
    compiled = [(compile_condition(r.if_), r.use_backend) for r in rules]
    if not compiled:
        return lambda req: default

    def route(req: Any) -> str | None:
        for test, backend in compiled:
            if test(req):
                return backend
        return default

    return route


def uses(rules: Sequence[Rule], *attributes: str) -> bool:
    """Whether any rule reads one of the given condition keys (e.g. ``host``)."""

    def walk(cond: Condition) -> bool:
        if any(getattr(cond, a, None) is not None for a in attributes):
            return True
        if cond.not_ is not None and walk(cond.not_):
            return True
        return any(walk(c) for c in cond.any or ())

    return any(walk(r.if_) for r in rules)
