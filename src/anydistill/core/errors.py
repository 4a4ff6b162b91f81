"""Errors shown to users. Each message is one line per problem and names the fix."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty): how a
    library's multi-line error is shown in a one-line problem."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class AnydistillError(Exception):
    """Base of every error the CLI prints without a traceback."""


class RecipeError(AnydistillError):
    """A recipe (or a `--set` override) has one or more problems; all are reported at once.

    Args:
        problems: one human-readable line per problem.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class MissingPackageError(AnydistillError):
    """An optional data or teacher package is not installed."""

    def __init__(self, package: str, module: str, purpose: str):
        super().__init__(
            f"{purpose} needs the package '{package}' (module '{module}'), which is not installed. "
            f"Install it with: pip install --no-deps {package}"
        )


class DataNotFoundError(AnydistillError, ValueError):
    """A data source's files, or a model builder's folder, are not on this machine (nothing is
    downloaded at run time).

    A recipe still validates without them: the checks that need them are left to the run, which
    repeats them. A source that declares its shapes (class attributes) skips only the checks of the
    methods that read the data (crd's ``data_problems``); a source whose shapes come from its files,
    or a builder (``diffusers-pipeline``), skips building the models and the methods' checks, and
    ``anydistill validate`` names what it could not check.
    """


class CacheError(AnydistillError):
    """A teacher signal cache is stale, corrupt or built for another teacher or dataset."""


class RunDirError(AnydistillError):
    """A run directory would be overwritten, or cannot be resumed."""


class TrainingError(AnydistillError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is untouched."""
