"""Confirmation emails, through Django's email framework, at most once per order."""

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from workflows import NonRetryableError

from .models import EmailRecord, EmailStatus, Order
from .money import amount_grouped

logger = logging.getLogger(__name__)

CONFIRMATION = "confirmation"


class ConfirmationUncertainError(NonRetryableError):
    """A worker died after claiming the confirmation and before the mail server took it:
    whether it left is unknown, and only an operator (with the mail log) can tell."""


def confirmation_message_id(order: Order) -> str:
    """Stable per order, so an operator can look the message up in the mail log."""
    return f"<order-{order.pk}-confirmation@{settings.EMAIL_MESSAGE_ID_DOMAIN}>"


def order_confirmation_send(*, order: Order) -> EmailRecord:
    """Send the order's confirmation email, or return the one already sent.

    The (order, kind) row is claimed (`sending`) before the message leaves, so a retry
    never sends twice. A send that fails releases the claim so that a retry may try
    again. A worker killed between claim and send leaves the row `sending`: that raises
    `ConfirmationUncertainError` rather than guess, and `manage.py resolve_confirmation`
    settles it.
    """
    subject = f"Your order {order.order_id} is confirmed"
    message_id = confirmation_message_id(order)
    try:
        with transaction.atomic():
            record = EmailRecord.objects.create(
                order=order,
                kind=CONFIRMATION,
                recipient=order.customer_email,
                subject=subject,
                message_id=message_id,
            )
    except IntegrityError:
        existing = EmailRecord.objects.get(order=order, kind=CONFIRMATION)
        if existing.status == EmailStatus.SENDING:
            raise ConfirmationUncertainError(
                f"The confirmation of order {order.order_id} was claimed at "
                f"{existing.created_at:%Y-%m-%d %H:%M:%S} UTC by a worker that stopped before "
                f"the mail server confirmed it. Look for Message-ID {existing.message_id} in "
                f"the mail log, then run `manage.py resolve_confirmation {order.order_id} "
                "--sent` or `--resend`."
            ) from None
        logger.info("order %s: confirmation already %s", order.order_id, existing.status)
        return existing

    context = {
        "order": order,
        "amount": amount_grouped(order.amount, order.currency),
        "currency": order.currency.upper(),
    }
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("emails/order_confirmation.txt", context),
        to=[order.customer_email],
        headers={"Message-ID": message_id},
    )
    message.attach_alternative(
        render_to_string("emails/order_confirmation.html", context), "text/html"
    )
    try:
        message.send(fail_silently=False)
    except Exception:
        record.delete()
        raise
    record.status = EmailStatus.SENT
    record.sent_at = timezone.now()
    record.save(update_fields=["status", "sent_at"])
    return record
