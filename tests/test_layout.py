"""The layout the README states: common/ holds the shared modules and one subpackage per domain, no module imports
itself back through another (imports inside functions included), and each problem's script stays short."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_modules():
    """{module name: its file} for every module of the project outside tests/."""
    files = [*ROOT.glob("*.py"), *ROOT.glob("common/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    return {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f for f in files}


def imported(module, path, modules):
    """The project modules that `module` imports anywhere in its file (top level or inside a function)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {name for name in names if name in modules and name != module}
    return found


def test_no_import_cycle():
    modules = project_modules()
    graph = {m: imported(m, f, modules) for m, f in modules.items()}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert graph["common.train"] and "common.precision" in graph["common.train"]  # the scan sees imports at all


def test_common_holds_few_modules_and_a_package_per_domain():
    assert len(list((ROOT / "common").glob("*.py"))) <= 10
    assert {p.name for p in (ROOT / "common").iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "mnist", "speech", "drawing", "report"}


def test_each_problem_script_stays_short():
    for script in sorted(ROOT.glob("p[1-5]_*.py")):
        assert len(script.read_text().splitlines()) <= 450, script.name
