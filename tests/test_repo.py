"""Repository contracts: CI runs the README's test command; every config key is documented."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_demo_and_test_commands_and_ci_runs_the_test_command():
    demo, tests = _readme_commands()[:2]
    assert "scripts/train_quant.py" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, f"{tests!r} not in .ci/run"


def test_every_config_key_has_a_comment():
    """A key line in conf/ must carry a '# comment' unless it opens a mapping or is a defaults-list entry."""
    offenders = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        lines = path.read_text().splitlines()
        in_defaults = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if re.match(r"^defaults:\s*$", line):
                in_defaults = True
                continue
            if in_defaults and (stripped.startswith("- ") or line.startswith(" ")):
                continue
            in_defaults = False
            m = re.match(r"^(\s*)([\w.\-/@]+):(.*)$", line)
            if not m or stripped.startswith("- "):
                continue
            value = m.group(3).split(" #")[0].strip()
            opens_mapping = value == "" and i + 1 < len(lines) and (len(lines[i + 1]) - len(lines[i + 1].lstrip())) > len(m.group(1))
            if "#" not in m.group(3) and not opens_mapping and not m.group(2).startswith("_"):
                offenders.append(f"{path.relative_to(ROOT)}:{i + 1}: {stripped}")
    assert not offenders, "undocumented config keys:\n" + "\n".join(offenders[:50])


def test_readme_quantize_example_runs():
    """The README's five-line quantize_ example, on the debug model."""
    from conftest import compose
    from qarvd.quant.linear import quant_layers

    section = (ROOT / "README.md").read_text().split("## The quantization API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"cfg": compose(["debug=tiny"])}
    exec(code, scope)  # noqa: S102  (the documentation's own code)
    layers = quant_layers(scope["pipe"].model)
    assert len(layers) == 20 and all(n.startswith("blocks.") for n in layers)  # 2 blocks x 10 linears
    assert all(g.w_int is not None for l in layers.values() for g in l.groups)  # hardened: integer codes
