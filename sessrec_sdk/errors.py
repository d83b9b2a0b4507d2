"""The one error family of a damaged or unusable bundle.

Every problem that comes from the bundle's files, at load or during a call, is raised as a
:class:`BundleError` subclass whose message names the file. Problems with a caller's
arguments are ``TypeError`` / ``ValueError`` as usual in Python.
"""
from __future__ import annotations


class BundleError(Exception):
    """A bundle cannot be used; the message names the file and the problem."""


class MissingFileError(BundleError):
    pass


class CorruptFileError(BundleError):
    pass


class ChecksumError(CorruptFileError):
    pass


class VersionError(BundleError):
    pass
