"""Boolean label expressions: ``a & (b | ~c)`` over a sparse experiment x label matrix."""

from __future__ import annotations

import difflib
import re

import numpy as np

from daskmeta.exceptions import DaskmetaError

_TOKEN = re.compile(r"\s*(?:(?P<op>[&|~()])|(?P<name>[^&|~()]+))")


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            break
        if m.group("op"):
            tokens.append(("op", m.group("op")))
        else:
            name = m.group("name").strip()
            if name:
                tokens.append(("name", name))
        pos = m.end()
    return tokens


def evaluate_label_expression(expr, label_names, labels, threshold) -> np.ndarray:
    """Evaluate a label expression to a boolean vector over the rows of ``labels``.

    Grammar: ``expr := term ('|' term)*``, ``term := factor ('&' factor)*``,
    ``factor := '~' factor | '(' expr ')' | NAME``. A NAME holds where the label's weight is
    ``>= threshold``. A label name that itself contains an operator character can be given
    alone (the whole expression is first tried as a name).
    """
    if not isinstance(expr, str) or not expr.strip():
        raise DaskmetaError(f"a label expression must be a non-empty string; got {expr!r}")
    labels = labels.tocsc(copy=False)
    label_names = list(label_names)
    n = labels.shape[0]

    def position(name: str):
        try:
            return label_names.index(name)  # a scan: cheaper than indexing every name
        except ValueError:
            return None

    def column(name: str) -> np.ndarray:
        at = position(name)
        if at is None:
            close = difflib.get_close_matches(name, label_names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DaskmetaError(
                f"unknown label {name!r} in expression {expr!r} ({len(label_names)} labels "
                f"available){hint}"
            )
        start, stop = labels.indptr[at], labels.indptr[at + 1]
        indices, data = labels.indices[start:stop], labels.data[start:stop]
        out = np.zeros(n, dtype=bool)
        rows = indices[data >= threshold]
        out[rows] = True
        if threshold <= 0:
            out[:] = True
            below = indices[data < threshold]
            out[below] = False
        return out

    if position(expr.strip()) is not None:
        return column(expr.strip())

    tokens = _tokenize(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def parse_expr():
        nonlocal pos
        value = parse_term()
        while peek() == ("op", "|"):
            pos += 1
            value = value | parse_term()
        return value

    def parse_term():
        nonlocal pos
        value = parse_factor()
        while peek() == ("op", "&"):
            pos += 1
            value = value & parse_factor()
        return value

    def parse_factor():
        nonlocal pos
        kind, tok = peek()
        if kind == "op" and tok == "~":
            pos += 1
            return ~parse_factor()
        if kind == "op" and tok == "(":
            pos += 1
            value = parse_expr()
            if peek() != ("op", ")"):
                raise DaskmetaError(f"unbalanced parenthesis in label expression {expr!r}")
            pos += 1
            return value
        if kind == "name":
            pos += 1
            return column(tok)
        found = "end of expression" if kind is None else repr(tok)
        raise DaskmetaError(
            f"malformed label expression {expr!r}: expected a label, '~' or '(' but found {found}"
        )

    result = parse_expr()
    if pos != len(tokens):
        raise DaskmetaError(
            f"malformed label expression {expr!r}: unexpected {tokens[pos][1]!r}"
        )
    return result
