"""The package's import direction (docs/architecture.md): every jaxrec module imports only
from its own layer or the layers below it, and no two modules import each other in a cycle.
Function-level imports count."""

import ast
import pathlib

from jaxrec import configs

PACKAGE = pathlib.Path(configs.REPO_ROOT, "jaxrec")
# Lower layers first. A module may import its own layer (acyclically) and any lower one.
LAYERS = (
    # The training machinery every fit runs on (the one loop, checkpoints, optimizers) is at the
    # bottom: the quantizers' fits use it; training.trainer (which evaluates) sits higher.
    ("files", "fingerprints", "plots", "data", "training.loop", "training.checkpoints",
     "training.optimizers"),
    ("metrics", "encoders", "collaborative", "quantizers", "generator", "decoding"),
    ("evaluation", "training"),
    ("jobs",),
    # configs.py is the one gin importer: `configs.bound` reads gin's bindings of the jobs
    # run_system is given, once, into plain values that the stages hash (fingerprints.py,
    # at the bottom, reads no gin); nothing else sees gin.
    ("configs", "pipeline", "sweep_spec", "sweep_reports", "sweep"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set:
  """The jaxrec modules a file imports (`from jaxrec.x import y` counts as jaxrec.x.y when
  that is a module, else jaxrec.x)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("jaxrec")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxrec"):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() or (
            PACKAGE.parent / sub.replace(".", "/")).is_dir()
        out.add(sub if is_module else node.module)
  return out


def _graph() -> dict:
  return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _top(module: str) -> str:
  return module.split(".")[1] if "." in module else ""


def _layer(module: str) -> int:
  """The layer of a module: its own entry (e.g. training.loop) or its package's."""
  name = module.split(".", 1)[1] if "." in module else ""
  return LAYER.get(name, LAYER.get(_top(module)))


def test_every_module_imports_only_its_layer_or_lower_ones():
  graph = _graph()
  unknown = sorted({_top(m) for m in graph if _top(m) and _top(m) not in LAYER})
  assert not unknown, f"add these packages to LAYERS: {unknown}"
  upward = [f"{m} -> {i}" for m, imports in graph.items() for i in imports
            if _top(m) and _top(i) and _layer(i) > _layer(m)]
  assert not upward, "imports against the direction:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules_or_packages():
  graph = _graph()
  packages = {}
  for m, imports in graph.items():
    packages.setdefault(_top(m), set()).update(_top(i) for i in imports if _top(i) != _top(m))
  for g in (graph, packages):
    state, stack = {}, []

    def visit(node, g=g, state=state, stack=stack):
      state[node] = "open"
      stack.append(node)
      for nxt in sorted(g.get(node, ())):
        if state.get(nxt) == "open":
          raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
        if nxt in g and nxt not in state:
          visit(nxt)
      stack.pop()
      state[node] = "done"
    for node in sorted(g):
      if node not in state:
        visit(node)
