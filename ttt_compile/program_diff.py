"""What a pass changed: a diff of two programs, the way a compiler's print-changed mode shows it.

Variable names are not stable between traces, so equations are compared by what they compute:
each equation becomes one line `out avals = primitive[params] in avals` (sub-jaxprs such as loop
bodies follow it, indented).  The two line sequences are aligned (difflib); an aligned pair that
differs is a rewrite (`~`), an unmatched line of the old program was removed (`-`), of the new one
added (`+`).  Unchanged runs are elided to a count.
"""

from __future__ import annotations

import dataclasses
import difflib

from jax.extend.core import ClosedJaxpr, Jaxpr, jaxprs_in_params


@dataclasses.dataclass(frozen=True)
class ProgramDiff:
    removed: int
    added: int
    rewritten: int
    unchanged: int
    text: str

    def __str__(self) -> str:
        return self.text


def _aval(a) -> str:
    return a.str_short() if hasattr(a, "str_short") else str(a)


def _param(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def equation_lines(jaxpr, depth: int = 0) -> list[str]:
    """One line per equation (recursively into sub-jaxprs), independent of variable names."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    lines = []
    for eqn in jaxpr.eqns:
        params = ", ".join(
            f"{k}={_param(v)}"
            for k, v in sorted(eqn.params.items())
            if not isinstance(v, (ClosedJaxpr, Jaxpr))
            and not (isinstance(v, tuple) and v and isinstance(v[0], (ClosedJaxpr, Jaxpr)))
        )
        outs = " ".join(_aval(v.aval) for v in eqn.outvars)
        ins = " ".join(_aval(v.aval) for v in eqn.invars)
        lines.append(f"{'  ' * depth}{outs} = {eqn.primitive}[{params}] {ins}")
        for sub in jaxprs_in_params(eqn.params):
            lines.extend(equation_lines(sub, depth + 1))
    return lines


def _primitive(line: str) -> str:
    return line.split(" = ", 1)[1].split("[", 1)[0]


def diff(before, after, context: int = 1) -> ProgramDiff:
    """The change from program `before` to `after` (ClosedJaxprs or Jaxprs).  Lines are aligned
    ignoring nesting depth (an unrolled loop's body equations are the same equations, now at top
    level); within a changed run an old and a new equation of the same primitive, in order, are a
    rewrite."""
    old, new = equation_lines(before), equation_lines(after)
    matcher = difflib.SequenceMatcher(a=[x.strip() for x in old], b=[x.strip() for x in new], autojunk=False)
    out, counts = [], {"removed": 0, "added": 0, "rewritten": 0, "unchanged": 0}
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            counts["unchanged"] += i2 - i1
            same = new[j1:j2]
            if len(same) > 2 * context + 1:
                same = same[:context] + [f"... {len(same) - 2 * context} unchanged equations"] + same[-context:]
            out.extend(f"  {line}" for line in same)
            continue
        j = j1
        for i in range(i1, i2):
            match = next((k for k in range(j, j2) if _primitive(new[k]) == _primitive(old[i])), None)
            if match is None:
                out.append(f"- {old[i]}")
                counts["removed"] += 1
                continue
            out.extend(f"+ {line}" for line in new[j:match])
            counts["added"] += match - j
            out.append(f"~ {old[i]}")
            out.append(f"  -> {new[match].lstrip()}")
            counts["rewritten"] += 1
            j = match + 1
        out.extend(f"+ {line}" for line in new[j:j2])
        counts["added"] += j2 - j
    changed = counts["removed"] + counts["added"] + counts["rewritten"]
    head = (
        f"{counts['removed']} removed, {counts['added']} added, {counts['rewritten']} rewritten, "
        f"{counts['unchanged']} unchanged"
    )
    return ProgramDiff(text="\n".join([head, *out]) if changed else head + " (no change)", **counts)
