"""Build the API reference (a static site) from the docstrings with pdoc; any warning pdoc
raises (a module that fails to import, an unresolvable annotation or link) fails the build.

    python docs/build.py [OUTPUT_DIR]          # default: site/
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

MODULES = ["valr_core", "valr_core.frontends.torch_module", "valr_core.frontends.keras_wgan", "valr_core.frontends.nnx"]


def main(argv: list[str] | None = None) -> int:
    import pdoc
    import pdoc.render

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "site")
    pdoc.render.configure(docformat="markdown", footer_text="valr: Virtual Adversarial Lipschitz Regularization")
    pdoc_dir = str(Path(pdoc.__file__).parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=out)
    # Frameworks warn about their own deprecations at import; only pdoc's warnings are ours.
    ours = [w for w in caught if w.filename.startswith(pdoc_dir) or issubclass(w.category, UserWarning) and "pdoc" in str(w.message)]
    for w in ours:
        print(f"docs warning: {w.filename}:{w.lineno}: {w.message}", file=sys.stderr)
    if ours:
        print(f"docs: {len(ours)} warning(s); failing", file=sys.stderr)
        return 1
    print(f"docs: API reference written to {out}/ ({len(list(out.rglob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
