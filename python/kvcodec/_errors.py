"""kvcodec.Error and one subclass per pinned status code (include/kvcodec/status.hpp)."""


class Error(Exception):
    """A failed kvcodec call.

    Attributes:
        code: the pinned integer StatusCode (equal to the C++ and C APIs' codes).
        code_name: its stable short name, e.g. "invalid_argument".
        message: what went wrong and, for bad input, what was expected.
    """

    code = -1
    code_name = "unknown"

    def __init__(self, code=None, message=""):
        if isinstance(code, str) and not message:  # Error("message") from Python code
            code, message = None, code
        if code is not None:
            self.code = int(code)
            self.code_name = _NAMES.get(self.code, "unknown")
        self.message = str(message)
        super().__init__(f"{self.code_name}: {self.message}")

    def __str__(self):  # also for the KeyError subclass, whose own __str__ quotes
        return f"{self.code_name}: {self.message}"


class InvalidArgument(Error, ValueError):
    code, code_name = 1, "invalid_argument"


class CorruptData(Error, ValueError):
    code, code_name = 2, "corrupt_data"


class UnsupportedVersion(Error):
    code, code_name = 3, "unsupported_version"


class BufferTooSmall(Error, ValueError):
    code, code_name = 4, "buffer_too_small"


class ChecksumMismatch(Error):
    code, code_name = 5, "checksum_mismatch"


class OutOfRange(Error, IndexError):
    code, code_name = 6, "out_of_range"


class Unavailable(Error):
    code, code_name = 7, "unavailable"


class IoError(Error, OSError):
    code, code_name = 8, "io_error"


class NotFound(Error, KeyError):
    code, code_name = 9, "not_found"


class Timeout(Error, TimeoutError):
    code, code_name = 10, "timeout"


class ResourceExhausted(Error, MemoryError):
    code, code_name = 11, "resource_exhausted"


class InternalError(Error):
    code, code_name = 12, "internal"


_CLASSES = {c.code: c for c in (InvalidArgument, CorruptData, UnsupportedVersion, BufferTooSmall,
                                ChecksumMismatch, OutOfRange, Unavailable, IoError, NotFound, Timeout,
                                ResourceExhausted, InternalError)}
_NAMES = {code: c.code_name for code, c in _CLASSES.items()}


def error_class(code):
    """The Error subclass of a StatusCode (Error itself for unknown codes)."""
    return _CLASSES.get(int(code), Error)
