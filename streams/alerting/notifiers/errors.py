"""What a notifier raises, grouped by what the dispatcher should do::

    DeliveryError                  the message did not reach the subscriber
    ├── RetriableDeliveryError     try again later (429, 5xx, timeouts, connection errors)
    │                              .retry_after: seconds the receiver asked us to wait, if it did
    └── PermanentDeliveryError     retrying cannot help (other 4xx, bad credentials, bad address)

Messages never contain a full webhook URL, a routing key or a password.
"""

from __future__ import annotations

__all__ = ["DeliveryError", "PermanentDeliveryError", "RetriableDeliveryError"]


class DeliveryError(Exception):
    pass


class RetriableDeliveryError(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    pass
