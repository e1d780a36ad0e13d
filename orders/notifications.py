"""Confirmation emails, through Django's email framework, at most once per order."""

import logging
from email.utils import make_msgid

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from .models import EmailRecord, EmailStatus, Order

logger = logging.getLogger(__name__)

CONFIRMATION = "confirmation"


def order_confirmation_send(*, order: Order) -> EmailRecord:
    """Send the order's confirmation email, or return the one already sent.

    The (order, kind) row is claimed before the message leaves, so a retry after a crash
    never sends twice (a crash between claim and send leaves the row `sending`, which
    an operator resolves by hand: at most once beats at least once for customers). A
    send that fails releases the claim so that the step's retry can try again.
    """
    subject = f"Your order {order.order_id} is confirmed"
    try:
        with transaction.atomic():
            record = EmailRecord.objects.create(
                order=order, kind=CONFIRMATION, recipient=order.customer_email, subject=subject
            )
    except IntegrityError:
        existing = EmailRecord.objects.get(order=order, kind=CONFIRMATION)
        logger.info("order %s: confirmation already %s", order.order_id, existing.status)
        return existing

    context = {"order": order, "amount": f"{order.amount:,.2f}", "currency": order.currency.upper()}
    message_id = make_msgid(idstring=f"order-{order.pk}", domain=settings.EMAIL_MESSAGE_ID_DOMAIN)
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
    record.message_id = message_id
    record.status = EmailStatus.SENT
    record.sent_at = timezone.now()
    record.save(update_fields=["message_id", "status", "sent_at"])
    return record
