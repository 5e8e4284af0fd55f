"""sqlglot's parse of a filter or derive text, bounded and with its errors in words.

sqlglot's parser is recursive, some 25 Python frames a level of nesting, so a text of 2,000 characters
can nest deep enough to run past Python's recursion limit (an internal error where a refusal belongs).
A linear scan of the tokens refuses such a text before the parser sees it.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError
from sqlglot.tokens import Token, TokenType

from .codes import Refusal

MAX_NESTING = 25

_OPENS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSES = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})
_OPERANDS = frozenset(
    {
        TokenType.VAR,
        TokenType.IDENTIFIER,
        TokenType.NUMBER,
        TokenType.STRING,
        TokenType.NULL,
        TokenType.TRUE,
        TokenType.FALSE,
    }
)


def _nesting(tokens: list[Token]) -> int:
    """How deep a text nests: each open bracket or CASE is a level, and so is each operator or keyword of
    a run between operands (`NOT NOT`, `- -`), which sqlglot parses by recursion too."""
    levels, run, deepest = [0], 0, 0
    for token in tokens:
        if token.token_type in _OPENS:
            levels.append(levels[-1] + run + 1)
            run = 0
        elif token.token_type in _CLOSES:
            if len(levels) > 1:
                levels.pop()
            run = 0
        elif token.token_type in _OPERANDS:
            run = 0
        else:
            run += 1
        deepest = max(deepest, levels[-1] + run)
    return deepest


def parsed(text: str, code: str, what: str) -> list[exp.Expression | None]:
    """sqlglot's statements of a text that nests at most `MAX_NESTING` deep; raise Refusal."""
    duckdb = Dialect.get_or_raise("duckdb")
    too_deep = Refusal(code, f"the {what} nests more than {MAX_NESTING} deep (brackets, CASE, NOT and signs)")
    try:
        tokens = duckdb.tokenize(text)
        if _nesting(tokens) > MAX_NESTING:
            raise too_deep
        return duckdb.parser().parse(tokens, text)
    except ParseError as exc:
        raise Refusal(code, f"the {what} could not be parsed: {_where(exc)}") from exc
    except sqlglot.errors.TokenError as exc:
        unclosed = "; a quote is not closed" if text.count("'") % 2 else ""
        raise Refusal(code, f"the {what} could not be parsed{unclosed}") from exc
    except RecursionError:  # a shape the scan does not count, or a caller already deep in its stack
        raise too_deep from None


def _where(error: ParseError) -> str:
    """The token a parse stopped at, and what was wrong there, in words (the text is the user's own)."""
    first = error.errors[0] if error.errors else {}
    token, column = first.get("highlight") or "", first.get("col") or 0
    description = str(first.get("description", ""))
    if "missing" in description:
        problem = "something is missing after it"
    elif description.startswith("Expecting"):
        problem = f"expected {description.partition(' ')[2]!r}"
    else:
        problem = "it is not expected there"
    if not token:
        return problem
    return f"at {token!r} (character {max(1, column - len(token) + 1)}), {problem}"
