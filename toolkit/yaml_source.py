"""YAML sources (``kct.yaml``, ``sagas.yaml``): the node tree with line numbers, ``${ENV}``
substitution, and precise errors pointing back at lines.

:func:`read_yaml` composes the text with ``yaml.SafeLoader`` (nothing else), so
each value keeps the line it was written on; it rejects duplicate keys (which
PyYAML would silently collapse) and substitutes ``${NAME}`` /
``${NAME:-default}`` in string values before any value is constructed.
:func:`validation_problems` walks pydantic's error locations back along that
tree to the offending line, and :func:`config_error` builds the
:class:`~toolkit.errors.ConfigurationError`.

Guarantees: an error names the file, the 1-based line (for a missing key, the
line of its parent) and the field path (``consistency.strong[1].timeout``),
and says what was expected. Inputs are echoed only for non-secret fields and
never for unknown keys; YAML's own messages are used without their source
snippet, which could hold a secret. A field is secret if its name says so
(:func:`is_secret_name`: ``password``, ``secret``, ``token``, ...) or it is a
credentials section (``sasl``, ``auth``) given as something else than a
mapping. Hostile input is bounded: nesting deeper than :data:`MAX_DEPTH`
levels and more than :data:`MAX_VALUES` values after expanding aliases are
errors (not a ``RecursionError`` or an exponential "billion laughs"), and at
most :data:`MAX_PROBLEMS` problems are listed.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.errors import ConfigurationError

__all__ = [
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "MAX_VALUES",
    "Problem",
    "config_error",
    "format_path",
    "is_secret_name",
    "read_yaml",
    "validation_problems",
]

MAX_DEPTH = 64  # nesting levels; kct.yaml needs about five
MAX_VALUES = 100_000  # nodes once aliases are expanded; kct.yaml needs hundreds
MAX_PROBLEMS = 50  # listed in one error; the rest are counted
# Field and librdkafka option names whose values are, or may hold, secrets.
_SECRET_NAME = re.compile(
    r"password|secret|token|credential|jaas|key\.pem|oauthbearer\.config|private", re.IGNORECASE
)
# Sections holding credentials: given as a scalar, that scalar may be one.
_CREDENTIAL_SECTIONS = frozenset({"sasl", "auth"})

Loc = Sequence[str | int]

_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "greater_than": "expected a number > {gt}",
    "greater_than_equal": "expected a number >= {ge}",
    "literal_error": "expected {expected}",
    "string_too_short": "expected a non-empty string",
    "too_short": "expected at least {min_length} character(s) or item(s)",
    "string_pattern_mismatch": "expected a string matching {pattern}",
}
_YAML_HINTS = {
    "expected <block end>": "bad indentation, this line does not line up with the ones above",
    "could not find expected ':'": "expected 'key: value' (a missing ':' or an unclosed quote?)",
    "mapping values are not allowed here": "unexpected ':' (quote a value that contains ': ')",
}
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}$]*))?\}|\$\{")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (line, field) and what was expected."""

    line: int | None
    field: str | None
    text: str

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return (
            f"{where}: {self.text}" if self.field is None else f"{where}: {self.field}: {self.text}"
        )


def is_secret_name(name: str) -> bool:
    """Whether a field or librdkafka option called ``name`` holds a secret."""
    return bool(_SECRET_NAME.search(name))


def _is_secret(loc: Loc) -> bool:
    names = [part for part in loc if isinstance(part, str)]
    return any(is_secret_name(name) for name in names) or (
        bool(loc) and loc[-1] in _CREDENTIAL_SECTIONS
    )


def config_error(source: str, problems: Sequence[Problem]) -> ConfigurationError:
    """All ``problems`` in one error, one per line (at most :data:`MAX_PROBLEMS`)."""
    lines = [problem.render(source) for problem in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    message = (
        lines[0]
        if len(problems) == 1
        else f"{len(problems)} problems in {source}:\n" + "\n".join(f"  {line}" for line in lines)
    )
    first = problems[0]
    return ConfigurationError(message, file=source, line=first.line, field=first.field)


def format_path(parts: Loc) -> str:
    """``("consistency", "strong", 1, "timeout")`` -> ``consistency.strong[1].timeout``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class _TooLarge(Exception):
    """The document nests too deep or expands to too many values."""

    def __init__(self, line: int | None, text: str) -> None:
        super().__init__(text)
        self.problem = Problem(line, None, text)


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses nesting deeper than :data:`MAX_DEPTH` (composing recurses)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            line = event.start_mark.line + 1
            raise _TooLarge(
                line, f"nested deeper than {MAX_DEPTH} levels (lists or mappings inside each other)"
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_size(root: yaml.Node) -> None:
    """Refuse recursive aliases and more than :data:`MAX_VALUES` nodes with aliases expanded."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_:
            line = node.start_mark.line + 1
            raise _TooLarge(line, "an alias (*name) refers to a value that contains it")
        open_.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[id(node)] = total = min(total, MAX_VALUES + 1)
        return total

    if size(root) > MAX_VALUES:
        raise _TooLarge(
            None, f"more than {MAX_VALUES} values (an alias *name counts each time it is used)"
        )


def read_yaml(text: str, source: str, env: Mapping[str, str]) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data, after key checks and interpolation."""
    try:
        loader = _BoundedLoader(text)  # checks the characters first
    except yaml.YAMLError as exc:
        raise config_error(source, [_syntax_problem(exc, text)]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_size(root)
        problems: list[Problem] = []
        _prepare(root, (), env, problems, set())
        if problems:
            raise config_error(source, problems)
        return root, loader.construct_document(root)
    except yaml.YAMLError as exc:  # never chained: its text quotes the source line
        raise config_error(source, [_syntax_problem(exc, text)]) from None
    except _TooLarge as exc:
        raise config_error(source, [exc.problem]) from None
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        return Problem(text.count("\n", 0, exc.position) + 1, None, f"invalid YAML: {exc.reason}")
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(None, None, "invalid YAML")
    problem = exc.problem or exc.context or "not valid YAML"
    mark = exc.problem_mark or exc.context_mark
    if ("end of stream" in problem or "<stream end>" in problem) and exc.context_mark:
        mark = exc.context_mark  # an unclosed quote or bracket: where it opened
    line = None if mark is None else mark.line + 1
    if "'\\t'" in problem:
        return Problem(line, None, "tab character: YAML indentation must use spaces")
    hint = next((h for key, h in _YAML_HINTS.items() if key in problem), None)
    detail = problem
    if exc.context and exc.problem:
        joined = problem.startswith("but ")  # "expected a single document ... but found ..."
        detail = f"{exc.context} {problem}" if joined else f"{problem} ({exc.context})"
    return Problem(
        line, None, f"invalid YAML: {hint} ({detail})" if hint else f"invalid YAML: {detail}"
    )


def _prepare(
    node: yaml.Node,
    path: tuple[str | int, ...],
    env: Mapping[str, str],
    problems: list[Problem],
    seen: set[int],
) -> None:
    """Reject duplicate keys and substitute ``${NAME}`` in string values, in place."""
    if id(node) in seen:  # an alias: done where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            line = key.start_mark.line + 1
            if name in first and key.tag != "tag:yaml.org,2002:merge":
                problems.append(
                    Problem(
                        line,
                        format_path((*path, name)),
                        f"duplicate key (first at line {first[name]})",
                    )
                )
            first.setdefault(name, line)
            _prepare(value, (*path, name), env, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _prepare(item, (*path, index), env, problems, seen)
    elif node.tag == "tag:yaml.org,2002:str" and "${" in node.value:
        node.value = _interpolate(node, path, env, problems)


def _interpolate(
    node: yaml.Node, path: tuple[str | int, ...], env: Mapping[str, str], problems: list[Problem]
) -> str:
    line, field = node.start_mark.line + 1, format_path(path)

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(
                Problem(
                    line, field, "expected ${NAME} or ${NAME:-default} (write $${ for a literal ${)"
                )
            )
            return ""
        value = env.get(name)
        if value or (value is not None and default is None):
            return value
        if default is not None:
            return default
        problems.append(
            Problem(
                line,
                field,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} for a default)",
            )
        )
        return ""

    return _REFERENCE.sub(substitute, str(node.value))


def validation_problems(
    exc: ValidationError, root: yaml.Node, model: type[BaseModel]
) -> list[Problem]:
    """One problem per pydantic error, located in the node tree, sorted by line.

    An unsupported ``version`` hides the rest: the other keys may be fine in it.
    """
    errors = exc.errors(include_url=False)
    version = [e for e in errors if tuple(e["loc"]) == ("version",) and e["type"] != "missing"]
    problems = []
    for error in version or errors:
        loc = tuple(error["loc"])
        line, shown = _locate(root, loc)
        problems.append(Problem(line, format_path(shown), _expectation(error, loc, model)))
    return sorted(problems, key=lambda p: p.line or 0)


def _locate(root: yaml.Node, loc: Loc) -> tuple[int, list[str | int]]:
    """The line of the node at ``loc`` (of its parent key if missing) and its shown path.

    Parts with no node of their own are left out of the path: a field given in
    shorthand (``order: [deduplicate, reorder]`` for ``strategies``) or a
    pydantic marker such as ``[key]``.
    """
    node, line = root, root.start_mark.line + 1
    shown: list[str | int] = []
    for index, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode) and part != "[key]":
            pairs = [p for p in node.value if isinstance(p[0], yaml.ScalarNode)]
            found = next((p for p in reversed(pairs) if p[0].value == str(part)), None)
            if found is None:
                shown.extend(loc[index:])
                break
            shown.append(str(part))  # a key, even if pydantic saw an int
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                shown.extend(loc[index:])
                break
            shown.append(part)
            node = node.value[part]
            line = node.start_mark.line + 1
    return line, shown


def _expectation(error: Any, loc: Loc, model: type[BaseModel]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "kct_invalid":
        return str(error["msg"])
    if kind == "extra_forbidden":
        return _unknown_key(loc, model)
    if kind == "missing":
        return "required but missing"
    template = _EXPECTED.get(kind)
    if template is None:
        return str(error["msg"])
    value = error.get("input")
    text = template.format_map({key: _number(item) for key, item in ctx.items()})
    if kind == "too_short" and ctx.get("min_length") == 1:
        text = "expected a non-empty value"
    quote = " (quote it)" if kind == "string_type" and isinstance(value, int | float) else ""
    if _is_secret(loc):
        return text + quote  # a secret's input is never echoed
    return f"{text}, got {_shown(value)}{quote}"


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _unknown_key(loc: Loc, model: type[BaseModel]) -> str:
    target: Any = model
    for part in loc[:-1]:
        target = _child(target, part)
    found = _as_model(target)
    if found is None:
        return "unknown key"
    allowed = list(found.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key; expected one of: {', '.join(allowed)}"


def _flatten(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flatten(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _as_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in _flatten(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _child(annotation: Any, part: str | int) -> Any:
    """The type one step below ``annotation`` along a pydantic location part."""
    found = _as_model(annotation)
    if found is not None and isinstance(part, str) and part in found.model_fields:
        return found.model_fields[part].annotation
    for candidate in _flatten(annotation):
        origin = get_origin(candidate)
        if origin in (dict, Mapping) and isinstance(part, str):
            return get_args(candidate)[1]
        if origin is tuple and isinstance(part, int):
            return get_args(candidate)[0]
    return annotation  # a shorthand or marker: the type does not move
