"""The MATH answer normalization (after Hendrycks et al. 2021, `_strip_string` in hendrycks/math
`math_equivalence.py`, as used by MetaMath and the ABBA evaluator), and the extraction of the gold
`\\boxed{...}` and the predicted "The answer is: ..." strings.

Every step only removes formatting (spacing, delimiter sizes, brace style, units, `3/4` vs `\\frac{3}{4}`) and
never changes what an answer says. Where a reference step breaks that rule, it is narrowed (each step's comment
says how); the reference's string results differ only on such inputs.

`normalize` raises `NormalizationError` exactly where the reference implementation raises (two "\\text{ " unit
markers, a "\\sqrt" with nothing after it, a "\\frac" with nothing after it): the official grader counts such
a pair as correct, which `eval.scoring.math_scorer` keeps as the named option `exception_correct`.
"""

from __future__ import annotations

import re

from abba.data.templates import ANSWER_MARKER


class NormalizationError(ValueError):
    """The reference normalization would have raised on this string."""


def last_boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces) or '\\boxed 5' / \\fbox{...}; None if there is none."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        return None
    rest = solution[start:]
    if rest.startswith("\\boxed "):
        return rest[len("\\boxed "):].split("$")[0].strip()
    brace = rest.find("{")
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[brace + 1:i]
    return None


def extract_prediction(completion: str) -> str | None:
    """Text after the last 'The answer is: ', cut at the first '.\\n', stripped of a trailing period (official)."""
    if ANSWER_MARKER not in completion:
        return None
    answer = completion.rsplit(ANSWER_MARKER, 1)[1].split(".\n")[0].strip()
    if answer.endswith("."):
        answer = answer[:-1]
    return answer.strip()


def _token_end(s: str, i: int) -> int:
    """End of the TeX token at s[i]: a balanced {...} group, a control word/symbol, or one character."""
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return j + 1
        return len(s)  # unbalanced: the rest of the string
    if s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        return max(j, min(i + 2, len(s)))
    return i + 1


def _brace_arguments(s: str, command: str, n_args: int) -> str:
    """Every `command`'s first `n_args` arguments written as {...} groups, recursively: '\\frac12' and
    '\\frac 1{2}' -> '\\frac{1}{2}', '\\sqrt 5' -> '\\sqrt{5}', '\\frac\\pi2' -> '\\frac{\\pi}{2}'.

    TeX reads an unbraced argument as the next token (spaces skipped), so this only changes how the answer is
    typeset. The reference instead wraps the next *character*: '\\sqrt 5' became '\\sqrt{ }5' ('\\sqrt{}5' once
    spaces are gone), '\\frac\\pi2' became '\\frac{\\}{p}i2'. A '\\sqrt[n]' index is kept and skipped.
    """
    out, i = [], 0
    while True:
        j = s.find(command, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + len(command)
        out.append(s[i:k])
        if k < len(s) and s[k].isalpha():  # a longer command name ('\\sqrtx' is not '\\sqrt')
            i = k
            continue
        for n in range(n_args):
            while k < len(s) and s[k] == " ":
                k += 1
            if n == 0 and command == "\\sqrt" and k < len(s) and s[k] == "[":
                close = s.find("]", k)
                if close < 0:
                    break
                out.append(_brace_arguments(s[k:close + 1], command, n_args))
                k = close + 1
                while k < len(s) and s[k] == " ":
                    k += 1
            if k >= len(s):  # a missing argument is left missing (the reference leaves it or raises, below)
                break
            end = _token_end(s, k)
            inner = s[k + 1:end - 1] if s[k] == "{" and s[end - 1] == "}" else s[k:end]
            out.append("{" + _brace_arguments(inner, command, n_args) + "}")  # nested commands too
            k = end
        i = k


def brace_arguments(s: str) -> str:
    """`s` with every unbraced \\sqrt/\\frac/\\dfrac/\\tfrac argument braced and nothing else changed (TeX's reading
    of the arguments). math-verify itself wraps the next *character* as the reference does, so '\\frac\\pi5'
    reaches sympy as '\\frac{\\}{p}i5' (read as 2): the scorer's raw check uses this form."""
    s = _brace_arguments(s, "\\sqrt", 1)
    for command in ("\\frac", "\\dfrac", "\\tfrac"):
        s = _brace_arguments(s, command, 2)
    return s


def _fix_fracs(s: str) -> str:
    """'\\frac12' -> '\\frac{1}{2}', '\\frac1{72}' -> '\\frac{1}{72}', '\\frac{1}2' -> '\\frac{1}{2}'."""
    if "" in s.split("\\frac")[1:]:  # the reference indexes the empty piece and raises
        raise NormalizationError("'\\frac' without an argument")
    return _brace_arguments(s, "\\frac", 2)


def _fix_a_slash_b(s: str) -> str:
    """'3/4' (two integers) -> '\\frac{3}{4}' (the same number)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


# '\\text{ ...}' (a space after the brace) marks a unit in MATH answers: '5\\text{ cm}', '45 \\text{ units}^2'.
_TRAILING_UNIT = re.compile(r"\\text\{ [^{}]*\}(\^(\{[^{}]*\}|\S))?\s*$")


def _remove_right_units(s: str) -> str:
    """'5\\text{ cm}' -> '5'; the reference asserts there is at most one '\\text{ '.

    The reference drops everything from the marker on, which loses answers: '19 \\text{ and }43' became '19',
    '7, -2, \\text{ and } -5' became '7, -2,'. Only a marker that ends the answer (with an optional exponent,
    'cm}^2') is a unit and is removed.
    """
    if s.count("\\text{ ") > 1:
        raise NormalizationError("more than one '\\text{ ' unit marker")
    match = _TRAILING_UNIT.search(s)
    return s[:match.start()] if match else s


def _fix_sqrt(s: str) -> str:
    """'\\sqrt3' and '\\sqrt 3' -> '\\sqrt{3}'; a '\\sqrt' with nothing after it makes the reference raise."""
    if "" in s.split("\\sqrt")[1:]:
        raise NormalizationError("'\\sqrt' without an argument")
    return _brace_arguments(s, "\\sqrt", 1)


# A control word followed by a space and a letter ('\\sec x', '2 \\tan x'): the space ends the command name, so
# removing it would make '\\secx', another (undefined) command. Such a space is kept (as one space).
_NEEDED_SPACE = re.compile(r"(\\[A-Za-z]+) +(?=[A-Za-z])")
# Thin/medium/thick, negative and control spaces ('10,\\!000', '0.25\\,\\text{ cm}', '1,\\ 2'); the '\\\\'
# alternative only keeps a row separator (whose second backslash is not a command) from matching.
_SPACING_COMMANDS = re.compile(r"\\\\|\\[!,;: ]")


def _remove_spaces(s: str) -> str:
    s = _NEEDED_SPACE.sub(lambda m: m.group(1) + "\0", s)
    return s.replace(" ", "").replace("\0", " ")


def normalize(s: str) -> str:
    """The Hendrycks MATH string normalization (units, \\left/\\right, \\dfrac, degrees, %, spaces, 'x = ',
    argument braces, a/b), narrowed where a reference step changed what an answer says, plus dropping a
    trailing period."""
    # A line break is a space to TeX (the reference deleted it, joining tokens).
    s = s.replace("\n", " ")
    # The reference deletes '\\!' only and then turns every '\\\\' into '\\', which destroys a matrix's row
    # separator ('\\begin{pmatrix} 5/3 \\\\ 1 \\end{pmatrix}'). Row separators are kept; all spacing commands
    # are removed.
    s = _SPACING_COMMANDS.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    # Not in the reference, which strips a trailing period from predictions only (one gold ends in ".").
    s = s.rstrip().removesuffix(".")
    # Substring replacements in the reference ('tfrac', '\\left') also hit '\\leftarrow', '\\rightarrow': only the
    # whole command names are replaced. '\\left.'/'\\right.' (an invisible delimiter) go with their dot.
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])\.?", "", s)
    # Units (degrees, dollars, percent, '\\text{ cm}') are dropped as in the reference: a MATH question fixes the
    # unit of its answer, so they are formatting there.
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")  # a bare '%' stays, as in the reference
    # '.5' -> '0.5'. The reference also turned ' .' and '{.' before a non-digit into ' 0.' / '{0.'.
    s = re.sub(r"(^|[ {])\.(?=\d)", r"\g<1>0.", s.strip())
    if not s:
        return s
    # 'x = 3' -> '3', 'k=5' -> '5'. The reference drops any left side of at most two characters, also 'x<' in
    # 'x<=3' and '-1' in '-1=x'; only a variable name is dropped.
    lhs_rhs = s.split("=")
    if len(lhs_rhs) == 2 and len(lhs_rhs[0]) <= 2 and re.fullmatch(r"\s*[A-Za-z]{1,2}\s*", lhs_rhs[0]):
        s = lhs_rhs[1]
    s = _fix_sqrt(s)
    s = _remove_spaces(s)
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)
