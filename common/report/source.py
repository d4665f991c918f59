"""The repository's own code in the report: a function, class or method found by name in its file with `ast` when
the report is built, so what the report shows is what runs; and the imports that let those definitions run, in
a notebook started from the repository root."""
import ast
import builtins
import textwrap

from ..cli import UserError
from ..files import ROOT
from .blocks import Code

DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def parse(file, root=ROOT):
    try:
        text = (root / file).read_text()
        return text, ast.parse(text, filename=file)
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        raise UserError(f"cannot read {file}, whose code the report shows ({e}); fix the list at the top of "
                        "common/report/problems.py")


def find(tree, name):
    """The definition `name` ("draw", "GRUMasker.forward") at the top of `tree`, or None; the last one counts,
    as when the module runs."""
    node = tree
    for part in name.split("."):
        found = [n for n in node.body if isinstance(n, DEFINITIONS) and n.name == part]
        if not found:
            return None
        node = found[-1]
    return node


def code(file, name, root=ROOT):
    """Code of `name` in `file` (relative to `root`), decorators included, dedented (a method)."""
    text, tree = parse(file, root)
    node = find(tree, name)
    if node is None:
        raise UserError(f"{file} has no {name}, which the report shows; fix the (file, name) list at the top of "
                        "common/report/problems.py")
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    source = textwrap.dedent("\n".join(text.splitlines()[first - 1:node.end_lineno]))
    return Code(file, name, (first, node.end_lineno), source)


def module_name(file):
    return file.removesuffix(".py").replace("/", ".")


def bindings(tree, module):
    """{name: (module, name, alias) or (module, None, alias)} for what the top of a module binds: its imports
    (relative ones made absolute) and its own definitions and assignments."""
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None,
                                                          a.asname)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(module.split(".")[:-node.level] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for a in node.names:
                bound[a.asname or a.name] = (base, a.name, a.asname)
        elif isinstance(node, DEFINITIONS):
            bound[node.name] = (module, node.name, None)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name):
                        bound[n.id] = (module, n.id, None)
    return bound


def free_names(node):
    """Names `node` reads that it does not bind itself (arguments, assignments, inner definitions, imports)."""
    read, own = set(), {node.name}
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (read if isinstance(n.ctx, ast.Load) else own).add(n.id)
        elif isinstance(n, ast.arg):
            own.add(n.arg)
        elif isinstance(n, DEFINITIONS) and n is not node:
            own.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            own.update(a.asname or a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            own.add(n.name)
    return read - own


def imports(codes, extra=(), root=ROOT):
    """The import lines that let every definition in `codes` run in order in a fresh interpreter started at `root`:
    each name one uses and neither binds nor finds defined by an earlier one is imported the way its own file
    imports or defines it. `extra` are more (module, name, alias) triples."""
    wanted, shown = set(extra), set()
    for c in codes:
        bound = bindings(parse(c.file, root)[1], module_name(c.file))
        node = ast.parse(c.source).body[0]
        for name in sorted(free_names(node) - shown):
            if name in bound:
                wanted.add(bound[name])
            elif not hasattr(builtins, name):
                raise UserError(f"{c.file}: {c.name} reads {name!r}, which its file neither imports nor defines at "
                                "its top level, so the report cannot show it as code that runs")
        shown.add(node.name)
    lines = sorted(f"import {m}" + (f" as {alias}" if alias else "") for m, name, alias in wanted if name is None)
    local = lambda m: (root / m.split(".")[0]).is_dir() or (root / f"{m.split('.')[0]}.py").is_file()  # noqa: E731
    for m in sorted({m for m, name, _ in wanted if name is not None}, key=lambda m: (local(m), m)):
        names = sorted(name + (f" as {alias}" if alias else "") for mm, name, alias in wanted
                       if mm == m and name is not None)
        lines.append(f"from {m} import {', '.join(names)}")
    return "\n".join(lines)
