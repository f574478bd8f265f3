"""The MaligNet app's modules. The bundle's root goes on the import path for its standard-library-only modules.

``malignet_bundle.atomic_io`` (and the lazily importing ``malignet_bundle`` package) import nothing outside the
standard library at module level, so MONAI Label's environment can use them; appended, not prepended, so
nothing of the bundle shadows MONAI Label's own modules.
"""

import sys
from pathlib import Path

_BUNDLE_ROOT = str(Path(__file__).resolve().parents[2])
if _BUNDLE_ROOT not in sys.path:
    sys.path.append(_BUNDLE_ROOT)
