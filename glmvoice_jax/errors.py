"""The user-error type: raised where a user's input is wrong, shown without a traceback.

Console scripts (``cli/doors.py``) print a ``UserError`` — and the ValueError / OSError family
that the library raises with a clear message — as one or two lines. It subclasses ValueError, so
library callers that catch ValueError keep working.
"""


class UserError(ValueError):
    """A mistake in what the user gave (a flag, a path, a file, a config value).

    The message names the thing, its value and what to do; the CLI shows it without a traceback.
    """


class MissingError(UserError, KeyError):
    """A name the user's file should hold but does not (a tensor, a field, a parameter).

    Also a KeyError, so ``except KeyError`` callers keep working; prints without KeyError's quotes.
    """

    def __str__(self) -> str:
        return ValueError.__str__(self)
