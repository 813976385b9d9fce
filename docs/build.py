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
    import valr_core

    # Only in this build process: each NamedTuple's generated __new__ claims a module
    # "namedtuple_X" that does not exist, so point it to the module defining the class.
    for name in valr_core.__all__:
        cls = getattr(valr_core, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            cls.__new__.__module__ = cls.__module__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=out)
    # Frameworks warn about their own deprecations at import; only pdoc's warnings are ours.
    ours = [w for w in caught if w.filename.startswith(pdoc_dir)]
    for w in ours:
        print(f"docs warning: {w.filename}:{w.lineno}: {w.message}", file=sys.stderr)
    if ours:
        print(f"docs: {len(ours)} warning(s); failing", file=sys.stderr)
        return 1
    print(f"docs: API reference written to {out}/ ({len(list(out.rglob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
