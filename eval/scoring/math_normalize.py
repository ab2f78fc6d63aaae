"""The standard MATH answer normalization (Hendrycks et al. 2021, as used by MetaMath and the ABBA evaluator),
and the extraction of the gold `\\boxed{...}` and the predicted "The answer is: ..." strings.

`normalize` raises `NormalizationError` exactly where the reference implementation raises (two "\\text{ " unit
markers, a bare "\\sqrt" at the end, a "\\frac" with nothing after it): the official grader counts such a pair
as correct, which `eval.scoring.math_scorer` keeps as the named option `exception_correct`.
"""

from __future__ import annotations

ANSWER_MARKER = "The answer is: "


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


def _fix_fracs(s: str) -> str:
    """'\\frac12' -> '\\frac{1}{2}', '\\frac1{72}' -> '\\frac{1}{72}' (braced arguments are left alone)."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part:
            raise NormalizationError("'\\frac' without an argument")
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:  # the reference returns the string unchanged here
            return s
        a, b, tail = part[0], part[1], part[2:]
        out += "{" + a + "}" + ("{" + b + "}" + tail if b != "{" else b + tail)
    return out


def _fix_a_slash_b(s: str) -> str:
    """'3/4' (two integers) -> '\\frac{3}{4}'."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _remove_right_units(s: str) -> str:
    """'5\\text{ cm}' -> '5'; the reference asserts there is exactly one '\\text{ '."""
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise NormalizationError("more than one '\\text{ ' unit marker")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    """'\\sqrt3' -> '\\sqrt{3}'; a '\\sqrt' at the very end makes the reference raise."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if not part:
            raise NormalizationError("'\\sqrt' without an argument")
        out += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def normalize(s: str) -> str:
    """The Hendrycks MATH string normalization (units, \\left/\\right, \\dfrac, degrees, %, spaces, 'x = '),
    plus dropping a trailing period."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.rstrip().removesuffix(".")  # not in the reference, which strips it from predictions only (one gold ends in ".")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")  # a bare '%' stays, as in the reference
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    lhs_rhs = s.split("=")
    if len(lhs_rhs) == 2 and len(lhs_rhs[0]) <= 2:  # 'x = 3' -> '3', 'k=5' -> '5'
        s = lhs_rhs[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)
