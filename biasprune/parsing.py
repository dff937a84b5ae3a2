"""``biasprune.parsing.parse_number`` (a contract of the Python API): the answer parser of
:mod:`biasprune.answers.parsing`."""

from biasprune.answers.parsing import parse_number

__all__ = ["parse_number"]
