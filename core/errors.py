"""Exceptions that core raises for bad input; the UI shows their message as is."""


class RobustLensError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class CheckpointError(RobustLensError):
    """A checkpoint is missing, corrupt, untrusted or does not fit the architecture."""


class UntrustedPickleError(CheckpointError):
    """A checkpoint that only loads by running code stored in it (trust=True)."""


class UnknownModelError(RobustLensError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(RobustLensError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(RobustLensError, FileNotFoundError):
    """A data set is absent; the message says how to get it."""


class BadImageError(RobustLensError, ValueError):
    """An upload that is not a readable, sane image."""


class StoreError(RobustLensError):
    """The results store is unreadable."""


class IncompatibleModelError(RobustLensError, ValueError):
    """A model does not fit the data or the other model an analysis needs."""


class UnlabelledDataError(RobustLensError, ValueError):
    """An analysis that needs each image's label (accuracy, an attack, task-loss
    stitching) was given images without labels."""


class DeviceError(RobustLensError, RuntimeError):
    """A device that this machine does not have, or no device at all by that name."""


class ComponentError(RobustLensError, IndexError):
    """A feature index that a representation does not have."""
