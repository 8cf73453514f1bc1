"""The architecture as the layout shows it: the method's files at the top level, the research code in
experiments/; the top level never imports experiments/, and no import cycle runs anywhere, experiments/ included."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = {"model", "data", "prepare", "tokenizer", "train", "finetune", "sample", "eval", "tasks", "metrics", "flops",
          "config", "runtime", "checkpoint", "pause", "plots", "bench", "bench_data"}


def imports_of(path: str) -> set[str]:
    """First components of every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def top_level() -> dict[str, set[str]]:
    files = [f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")]
    return {m: imports_of(os.path.join(ROOT, m + ".py")) & (set(files) | {"experiments"}) for m in files}


def test_top_level_holds_exactly_the_method():
    assert set(top_level()) == METHOD
    assert os.path.isfile(os.path.join(ROOT, "experiments", "__init__.py"))


def test_no_top_level_module_imports_experiments():
    assert {m for m, deps in top_level().items() if "experiments" in deps} == set()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as a path, or None."""
    done: set[str] = set()

    def visit(m: str, path: list[str]):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for d in sorted(graph.get(m, ())):
            if cycle := visit(d, path + [m]):
                return cycle
        done.add(m)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def all_modules() -> dict[str, set[str]]:
    """Every module, top level and experiments.X, with the modules of the project it imports (anywhere in it)."""
    files = {f[:-3]: os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")}
    files |= {f"experiments.{f[:-3]}": os.path.join(ROOT, "experiments", f)
              for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py") and f != "__init__.py"}
    graph = {}
    for m, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[m] = {d for d in deps if d in files and d != m}
    return graph


def test_no_import_cycle_anywhere_experiments_included():
    assert find_cycle(all_modules()) is None


def test_the_graph_sees_experiment_imports():
    graph = all_modules()
    assert "experiments.lab" in graph["experiments.study"] and "pause" in graph["finetune"]


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
