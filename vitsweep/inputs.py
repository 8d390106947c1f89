"""Limits on what a user hands in, and the one way a value is quoted in a message.

Bad input of any size gets a short answer:

- :func:`brief` quotes a value in an error or warning: its ``repr`` up to 80 characters, else those
  80, ``...`` and what the value is (``a list of 9 items, nested 9 deep``). Every validator quotes
  values with it (trainer configs, sweep files, ``--set``, command-line options).
- :func:`read_text` refuses a config or sweep file above :data:`MAX_BYTES` (1 MiB; real ones are a
  few KB) before reading it.
- :func:`stored_json` refuses to keep more than :data:`MAX_BYTES` of a sweep in its study.
- :func:`load_yaml` is ``yaml.safe_load`` with bounds: a document whose aliases expand it past
  :data:`MAX_NODES` values or :data:`MAX_BYTES` of text, or that nests deeper than :data:`MAX_DEPTH`,
  is refused while it is composed (which costs as much as the file's own size), naming the line.

A refusal is a :class:`ConfigError` (exit code 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from vitsweep.errors import ConfigError

MAX_BYTES = 1 << 20  # a config or sweep file, a --set value, the text of an expanded document
MAX_NODES = 10_000  # values in a document, its aliases expanded (sweeps/*.yaml: 300 at most)
MAX_DEPTH = 50  # nesting of a document, its aliases expanded (real files: under 10)
MAX_ERRORS = 20  # problems listed in one message; the rest are counted
SHOWN = 80  # characters of a value that a message quotes
SHOWN_PATH = 240  # characters of a file's path (real ones are longer than a value)


# ---------------------------------------------------------------------------------------------
# Quoting values


def brief(value: Any, plain: bool = False, limit: int = SHOWN) -> str:
    """``repr(value)`` (``plain``: a string's own text) if it has at most ``limit`` characters; else
    its first ``limit`` characters, ``...`` and what the value is:
    ``[['lol', 'lol', ... (a list of 9 items, nested 9 deep)``. Takes time in proportion to
    ``limit``, not to the value (a list whose aliases make it a billion items long included)."""
    n = limit + 1
    text = _head(iter([value[:n]]) if plain and isinstance(value, str) else _pieces(value, n), n)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({what(value)})"


def brief_list(items: Iterable[Any], limit: int = SHOWN) -> str:
    """``", ".join(map(str, items))`` as :func:`brief` would quote it: ``a, b, c... (5,000 in all)``."""
    items = list(items)
    text = _head(_joined(items, limit + 1), limit + 1)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(items):,} in all)"


def brief_path(path: Any) -> str:
    """A file's path as a message shows it: :func:`brief` of its text, with room for real paths."""
    return brief(str(path), plain=True, limit=SHOWN_PATH)


def what(value: Any) -> str:
    """A value's type and size: ``a string of 1,048,576 characters``, ``a mapping of 3 keys, nested 2 deep``."""
    if isinstance(value, str):
        return f"a string of {len(value):,} characters"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value):,} bytes"
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int):
        return f"an integer of about {_digits(value):,} digits"
    kinds = {dict: ("a mapping", "key"), list: ("a list", "item"), tuple: ("a list", "item"),
             set: ("a set", "item"), frozenset: ("a set", "item")}
    for cls, (kind, unit) in kinds.items():
        if isinstance(value, cls):
            n = len(value)
            out = f"{kind} of {n:,} {unit}{'' if n == 1 else 's'}"
            depth = _depth(value)
            if depth is None:
                return out + ", which contains itself"
            return out + (f", nested {depth} deep" if depth > 1 else "")
    return f"a {type(value).__name__}"


def error_list(header: str, errors: list[str]) -> str:
    """``header:`` and one ``  - problem`` line each, at most :data:`MAX_ERRORS` of them (the
    others counted): a file with 50,000 bad keys gets a message of 20 lines."""
    shown = errors[:MAX_ERRORS]
    lines = [f"  - {e}" for e in shown]
    if len(errors) > len(shown):
        lines.append(f"  - ... and {len(errors) - len(shown):,} more problems (fix these first)")
    return f"{header}:\n" + "\n".join(lines)


def is_finite(value: Any) -> bool:
    """A number that a float holds (``math.isfinite`` raises for an int beyond any float)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        return False


def _head(pieces: Iterator[str], n: int) -> str:
    """The first ``n`` characters that ``pieces`` make up, without producing the rest."""
    out: list[str] = []
    size = 0
    for p in pieces:
        out.append(p)
        size += len(p)
        if size >= n:
            break
    return "".join(out)[:n]


def _joined(items: list[Any], n: int) -> Iterator[str]:
    for i, item in enumerate(items):
        if i:
            yield ", "
        yield from iter([item[:n]]) if isinstance(item, str) else _pieces(item, n)


def _pieces(value: Any, n: int) -> Iterator[str]:
    """``repr(value)`` piece by piece, for a consumer that stops after ``n`` characters: a string is
    cut to ``n`` first, and every container opens with a character before its items (so the
    consumer never recurses deeper than ``n``)."""
    if isinstance(value, (str, bytes, bytearray)):
        yield repr(value[:n])
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        yield repr(value)
    elif isinstance(value, int):
        yield repr(value) if _digits(value) < 1000 else f"<{what(value)}>"
    elif isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            if i:
                yield ", "
            yield from _pieces(k, n)
            yield ": "
            yield from _pieces(v, n)
        yield "}"
    elif isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, (set, frozenset)) and not value:
            yield f"{type(value).__name__}()"
            return
        yield {list: "[", tuple: "("}.get(type(value), "{")
        for i, v in enumerate(value):
            if i:
                yield ", "
            yield from _pieces(v, n)
        if isinstance(value, tuple) and len(value) == 1:
            yield ","
        yield {list: "]", tuple: ")"}.get(type(value), "}")
    else:
        yield repr(value)


def _digits(n: int) -> int:
    return max(1, math.floor(abs(n).bit_length() * math.log10(2)) + 1)


def _depth(value: Any) -> int | None:
    """How deep containers nest in ``value`` (1: no container inside); None if it contains itself.
    Each distinct container is visited once, so a value that shares its parts (YAML aliases) costs
    its distinct parts, not its expanded size."""
    done: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, Iterator[Any] | None]] = [(value, None)]
    while stack:
        node, children = stack[-1]
        if children is None:
            on_path.add(id(node))
            items = [x for kv in node.items() for x in kv] if isinstance(node, dict) else node
            children = iter([c for c in items if isinstance(c, (dict, list, tuple, set, frozenset))])
            stack[-1] = (node, children)
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            items = [x for kv in node.items() for x in kv] if isinstance(node, dict) else node
            done[id(node)] = 1 + max((done[id(c)] for c in items if id(c) in done), default=0)
        elif id(child) in on_path:
            return None
        elif id(child) not in done:
            stack.append((child, None))
    return done[id(value)]


# ---------------------------------------------------------------------------------------------
# Reading files and YAML


def read_text(path: Path) -> str:
    """A config or sweep file's text: refused (ConfigError) when missing, unreadable, above
    :data:`MAX_BYTES` (before reading more than that) or not UTF-8."""
    name = brief_path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{name}: no such file")
        size = path.stat().st_size
        if size <= MAX_BYTES:
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)  # a file that grew, or says it is empty (/proc)
            size = len(data)
    except OSError as e:
        raise ConfigError(f"{name}: cannot be read ({e.strerror or e})") from None
    if size > MAX_BYTES:
        raise ConfigError(f"{name}: {_size(size)}, more than the {_size(MAX_BYTES)} a config or sweep file may have "
                          f"(real ones are a few KB); is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a text file (not UTF-8); give a YAML file such as sweeps/smoke.yaml") from None


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` within the limits (``where`` names the source in a refusal: a file,
    ``--set KEY``). Raises ConfigError for a document past a limit, ``yaml.YAMLError`` (its message
    short) for one that is not YAML."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters, more than the {_size(MAX_BYTES)} a value may have")
    loader = _BoundedLoader(text, where)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        e.problem = brief(e.problem, plain=True, limit=200) if e.problem else e.problem
        e.context = brief(e.context, plain=True, limit=200) if e.context else e.context
        raise
    finally:
        loader.dispose()


def stored_json(raw: Any, where: str) -> str:
    """``json.dumps(raw)``, refused (ConfigError) above :data:`MAX_BYTES`: what a study keeps of its
    sweep (a study that an older version stored a larger one in still opens: only writing is refused)."""
    text = json.dumps(raw)
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where}: it comes to {_size(len(text))} of JSON, more than the {_size(MAX_BYTES)} a study "
                          f"keeps of its sweep (its trainer config and space are most of it); declare fewer or "
                          f"shorter choices")
    return text


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB ({n:,} bytes)" if n % (1 << 20) else f"{n >> 20} MiB"
    return f"{n:,} bytes"


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts, while composing, what the document holds once its aliases are
    expanded (an alias adds the size of the value it names), and stops at the first line past a
    limit. Values that cannot be constructed (a 30th of February, a 5,000-digit integer) are YAML
    errors with their line, as every other construction error."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.nodes = 0  # values so far, aliases expanded
        self.chars = 0  # characters of scalars so far, aliases expanded
        self.depth = 0  # containers open around the node being composed
        self.sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, chars, levels), expanded
        self.height = 0  # the deepest level reached inside the node being composed

    def _refuse(self, mark: Any, problem: str) -> None:
        raise ConfigError(f"{self.where}: line {mark.line + 1}: {problem}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the node it names (or a YAML error)
            if id(node) not in self.sizes:
                self._refuse(event.start_mark, f"alias *{brief(event.anchor, plain=True)} names a value that "
                                               f"contains it (a document that never ends once expanded)")
            nodes, chars, height = self.sizes[id(node)]
            self._count(nodes, chars, self.depth + height, event.start_mark, alias=True)
            return node
        nodes0, chars0, outer_height = self.nodes, self.chars, self.height
        self.height = 0
        self._count(1, len(event.value) if isinstance(event, yaml.ScalarEvent) else 0, self.depth + 1,
                    event.start_mark, alias=False)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.sizes[id(node)] = (self.nodes - nodes0, self.chars - chars0, self.height - self.depth)
        self.height = max(outer_height, self.height)
        return node

    def _count(self, nodes: int, chars: int, height: int, mark: Any, alias: bool) -> None:
        self.nodes += nodes
        self.chars += chars
        self.height = max(self.height, height)
        by = "the alias here expands the document to" if alias else "the document has"
        if self.nodes > MAX_NODES:
            self._refuse(mark, f"{by} more than {MAX_NODES:,} values, the limit (real sweep files have a few "
                               f"hundred); write fewer values, or use fewer aliases")
        if self.chars > MAX_BYTES:
            self._refuse(mark, f"{by} more than {_size(MAX_BYTES)} of text, the limit; use fewer aliases")
        if height > MAX_DEPTH:
            self._refuse(mark, f"{'the alias here nests' if alias else 'nested'} more than {MAX_DEPTH} deep, "
                               f"the limit (real files nest fewer than 10 levels)")

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # int('1' * 5000), date(2001, 2, 30), float('abc')
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({e})",
                                                    node.start_mark) from None
