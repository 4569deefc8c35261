import ast
import pathlib

import slirpy

ROOT = pathlib.Path(slirpy.__file__).parent
SANS_IO = ["wire", "flows", "services", "udp.py", "icmp.py", "stack.py", "effects.py",
           "guest.py", "reassembly.py", "config.py", "errors.py"]
FORBIDDEN = {"socket", "select", "selectors", "os", "time", "subprocess", "pyroute2"}


def imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_sans_io_core_does_no_io() -> None:
    for entry in SANS_IO:
        paths = [ROOT / entry] if entry.endswith(".py") else sorted((ROOT / entry).rglob("*.py"))
        assert paths, entry
        for path in paths:
            bad = {m for m in imports(path)
                   if m.split(".")[0] in FORBIDDEN or "runtime" in m.split(".")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
