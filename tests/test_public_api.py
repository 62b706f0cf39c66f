"""The public surface: true ``__all__`` lists, a cheap ``import mrcnn_nuclei``, top-level names.

The ``__all__`` checks read the sources (no imports), so they cover every module of the package,
slides and commands included, in well under a second.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mrcnn_nuclei"
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
DYNAMIC = object()


def _module_names(tree):
    """(names bound at module level, public functions/classes defined there, __all__ or None)."""
    bound, public, exported = set(), [], None

    def visit(body):
        nonlocal exported
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
                if not node.name.startswith("_"):
                    public.append(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    bound.add((alias.asname or alias.name).split(".")[0])
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            bound.add(name.id)
                            if name.id == "__all__":
                                try:
                                    exported = ast.literal_eval(node.value)
                                except ValueError:  # built at import time (lazy modules)
                                    exported = DYNAMIC
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return bound, public, exported


def _rel(path):
    return str(path.relative_to(PKG.parent))


@pytest.mark.parametrize("path", [p for p in MODULES if p != PKG / "__init__.py"], ids=_rel)
def test_all_lists_exactly_the_public_names(path):
    """Every name in __all__ is bound in the module, every public function/class the module
    defines is in __all__, and a module that defines public names has an __all__."""
    bound, public, exported = _module_names(ast.parse(path.read_text(), str(path)))
    if exported is DYNAMIC:  # a lazy module (utils): import it and resolve every name
        import importlib

        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        module = importlib.import_module(name.removesuffix(".__init__"))
        exported = list(module.__all__)
        bound |= {n for n in exported if hasattr(module, n)}
    if exported is None:
        assert not public, f"{_rel(path)} defines {public} but has no __all__"
        return
    assert len(exported) == len(set(exported)), f"{_rel(path)}: __all__ repeats a name"
    assert not [n for n in exported if n not in bound], \
        f"{_rel(path)}: __all__ names what the module does not define or import"
    assert not [n for n in public if n not in exported], \
        f"{_rel(path)}: public definitions missing from __all__"


def test_the_checker_sees_a_gap():
    """The source check flags a public def missing from __all__ and a name that is not bound."""
    bound, public, exported = _module_names(ast.parse(
        "from x import a\n__all__ = ['a', 'ghost']\ndef b(): pass\ndef _c(): pass\n"))
    assert exported == ["a", "ghost"] and public == ["b"]
    assert [n for n in exported if n not in bound] == ["ghost"]


def test_import_is_cheap_and_loads_no_tensorflow():
    """`import mrcnn_nuclei` and every top-level name but the model leave TensorFlow, Keras and
    JAX unloaded (a fresh interpreter)."""
    code = (
        "import sys, mrcnn_nuclei as mn\n"
        "heavy = ('tensorflow', 'keras', 'jax')\n"
        "assert not [m for m in heavy if m in sys.modules], 'import mrcnn_nuclei'\n"
        "for name in mn.__all__:\n"
        "    if name != 'MaskRCNN':\n"
        "        getattr(mn, name)\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_top_level_names_resolve_to_their_modules():
    import mrcnn_nuclei as mn
    from mrcnn_nuclei import config, evaluation, model, modelfolder, runs
    from mrcnn_nuclei.datasets import DSBDataset

    assert mn.MaskRCNN is model.MaskRCNN
    assert mn.NucleusConfig is config.NucleusConfig and mn.Config is config.Config
    assert mn.DSBDataset is DSBDataset
    assert mn.evaluate_dataset is evaluation.evaluate_dataset
    assert mn.load_model is modelfolder.load_model
    assert mn.find_last_checkpoint is runs.find_last_checkpoint
    for name in mn.__all__:
        assert getattr(mn, name) is not None, name
    assert set(mn.__all__) <= set(dir(mn))
    assert mn.metrics.__name__ == "mrcnn_nuclei.metrics"   # submodules load on attribute use
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        mn.not_a_name


def test_model_module_reexports_the_moved_names():
    """Matterport-era imports from mrcnn_nuclei.model keep working after the split."""
    from mrcnn_nuclei import model, network, runs, training

    for name in ("LAYER_REGEX", "WarmUp", "LearningRateDecay", "cosine_factor",
                 "MaskRCNNTrainingModel", "AtomicCheckpoint"):
        assert getattr(model, name) is getattr(training, name)
    assert model.find_last_checkpoint is runs.find_last_checkpoint
    assert model.checkpoint_epoch is runs.checkpoint_epoch
    assert model.INFERENCE_OUTPUTS is network.INFERENCE_OUTPUTS
    assert callable(model.log) and not hasattr(model.MaskRCNN, "ancestor")
