"""sessrec: real-time session-based next-item recommendation from an exported bundle.

    from sessrec_sdk import Recommender
    rec = Recommender.load("bundle/")
    rec.recommend([1057, 822, 90], k=10)

Importing this package loads numpy and onnxruntime only (no torch, no numba).
"""
from ._version import __version__
from .bundle import FORMAT_VERSION
from .errors import BundleError, ChecksumError, CorruptFileError, MissingFileError, VersionError
from .limits import Limits
from .recommender import Recommender
from .result import Recommendation

__all__ = ["FORMAT_VERSION", "BundleError", "ChecksumError", "CorruptFileError", "Limits",
           "MissingFileError", "Recommendation", "Recommender", "VersionError", "__version__"]
