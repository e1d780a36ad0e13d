"""Errors of the orders domain that more than one module raises. Each door turns them
into its own answer (a 404, a command's one line, an admin message); none of them knows
about HTTP."""

from workflows import NonRetryableError


class NotFound(LookupError):
    """Nothing the caller may see has that id: it does not exist, or it is another
    client's. The API answers 404 (`orders.api.exceptions`), a command one line."""


class OrderActionRefusedError(NonRetryableError):
    """A charge or confirmation of the order was refused: the tool call's arguments
    differ from the run's own order (`order_check_arguments`), or the order's state or
    the policy forbids it now (cancelled, not charged, review not approved). Not
    retried: the agent gets the message as the tool's error, a workflow step fails."""


class PaymentReleasePendingError(Exception):
    """The order is cancelled, but its money was not given back: the gateway failed
    while cancelling the hold or refunding the capture. Cancelling the order again
    retries the release; each door says how."""

    def __init__(self, *, order_id: str, cause: Exception) -> None:
        super().__init__(
            f"Order {order_id} is cancelled, but its payment was not released: {cause}"
        )
        self.order_id = order_id
        self.cause = cause
