"""The one error type every contract violation raises."""

from __future__ import annotations


class ContractError(ValueError):
    """A file or config that breaks a contract.

    The message always says where: the file (when known) and the field path
    (``stages[1].seq_len``), so a user can fix it without reading lwmkit's source.
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.reason = message
        self.field = field
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{': '.join(where)}: {self.reason}" if where else self.reason

    def located(self, *, source: str | None = None, prefix: str | None = None) -> ContractError:
        """The same error with a file name and/or a parent field path added."""
        field = self.field
        if prefix:
            field = f"{prefix}.{field}" if field and not field.startswith("[") else f"{prefix}{field or ''}"
        return ContractError(self.reason, field=field, source=source or self.source)
