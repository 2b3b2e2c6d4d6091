#!/usr/bin/env python
"""Check that every role variable is declared, documented and prefixed.

For each role under roles/:
- every variable in defaults/main.yml starts with ``fleetproxy_`` (the collection-wide
  prefix; ansible-lint's var-naming[no-role-prefix] would want the directory name);
- meta/argument_specs.yml declares exactly those variables for the ``main`` entry point,
  with the same default values;
- the role README has a table row for each of them.

Exit status 1 with one line per problem.
"""

from __future__ import annotations

import pathlib
import re
import sys

import yaml

PREFIX = "fleetproxy_"


def check_role(role: pathlib.Path) -> list[str]:
    """Every problem found in one role."""
    problems = []
    defaults_file = role / "defaults" / "main.yml"
    defaults = yaml.safe_load(defaults_file.read_text(encoding="utf-8")) if defaults_file.exists() else {}
    defaults = defaults or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = specs["argument_specs"]["main"].get("options", {})
    readme = (role / "README.md").read_text(encoding="utf-8")

    for name in defaults:
        if not name.startswith(PREFIX):
            problems.append(f"{role.name}: {name}: role variables start with {PREFIX}")
        if name not in options:
            problems.append(f"{role.name}: {name}: missing from meta/argument_specs.yml")
        elif "default" in options[name] and options[name]["default"] != defaults[name]:
            problems.append(
                f"{role.name}: {name}: argument_specs default {options[name]['default']!r} "
                f"differs from defaults/main.yml {defaults[name]!r}"
            )
        if not re.search(rf"^\| `{re.escape(name)}` \|", readme, re.MULTILINE):
            problems.append(f"{role.name}: {name}: not documented in README.md")
    for name in options:
        if name not in defaults:
            problems.append(f"{role.name}: {name}: in argument_specs.yml but has no default in defaults/main.yml")
    return problems


def main() -> int:
    """Check every role of the collection."""
    root = pathlib.Path(__file__).resolve().parent.parent
    problems = []
    for role in sorted((root / "roles").iterdir()):
        if (role / "meta" / "argument_specs.yml").exists():
            problems.extend(check_role(role))
        elif role.is_dir():
            problems.append(f"{role.name}: no meta/argument_specs.yml")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
