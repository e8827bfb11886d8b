"""Exceptions raised by symce."""


class ProofError(ValueError):
    """A derivation step does not follow from its stated rule and assumptions."""


class UnknownLossError(KeyError):
    """No loss of that name is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""
