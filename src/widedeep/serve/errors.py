"""Bad ranking requests: one error type whose `.field` is the JSON path of the offending value."""

from __future__ import annotations


class RequestError(ValueError):
    """A request that cannot be scored; `field` is a path such as ``candidates[3].app_price`` (``""`` for the whole body)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.status = field, message, status
