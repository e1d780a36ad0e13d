"""Emails, through Django's email framework, each at most once per order and kind: the
customer's confirmation, and the fraud reviewers' alert and reminder about its review."""

import logging
from datetime import UTC, datetime

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import DatabaseError, IntegrityError
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from workflows import NonRetryableError
from workflows.engine.compiled_queries import CompiledInsert, CompiledUpdate, RowExists

from .mail import delivery_outcome, email_failure
from .models import EmailKind, EmailRecord, EmailStatus, Order, OrderStatus
from .money import amount_grouped
from .roles import DECIDE_PERMISSION
from .selectors import reviewers_to_tell

logger = logging.getLogger(__name__)

CONFIRMATION = EmailKind.CONFIRMATION
# To the fraud reviewers, once per review each (an order has at most one review).
REVIEW_ALERT = EmailKind.REVIEW_ALERT
REVIEW_REMINDER = EmailKind.REVIEW_REMINDER
EMAIL_RECIPIENT_MAX_LENGTH = 254  # EmailRecord.recipient


class ConfirmationUncertainError(NonRetryableError):
    """A worker died after claiming the confirmation and before the mail server took it:
    whether it left is unknown, and only an operator (with the mail log) can tell."""


class ConfirmationRefusedError(NonRetryableError):
    """The order was cancelled before its confirmation was claimed: none is sent."""


def confirmation_message_id(order: Order) -> str:
    """Stable per order, so an operator can look the message up in the mail log."""
    return f"<order-{order.pk}-confirmation@{settings.EMAIL_MESSAGE_ID_DOMAIN}>"


# Marks each confirmation sent: compiled once.
_email_record_write = CompiledUpdate(EmailRecord, ["pk"])
# Claims a confirmation unless the order is cancelled, in one statement that holds the
# order's row, as `order_cancel` does, and is on disk before the message leaves, even in
# a worker (workflows.engine.durability).
_confirmation_claim = CompiledInsert(
    EmailRecord, only_if=RowExists(Order, ["pk"], ~Q(status=OrderStatus.CANCELLED)), durable=True
)


def order_confirmation_send(*, order: Order) -> EmailRecord:
    """Send the order's confirmation email, or return the one already sent.

    The (order, kind) row is claimed (`sending`) before the message leaves, so a retry
    never sends twice. A send that fails releases the claim so that a retry may try
    again. A worker killed between claim and send leaves the row `sending`: that raises
    `ConfirmationUncertainError` rather than guess, and `manage.py resolve_confirmation`
    settles it.

    The claim holds the order's row, as `order_cancel` does: of a cancel and a claim at
    the same moment one wins, so an order is never both cancelled and confirmed. A
    cancelled order raises `ConfirmationRefusedError` and nothing is sent.
    """
    subject = f"Your order {order.order_id} is confirmed"
    message_id = confirmation_message_id(order)
    record = EmailRecord(
        order=order,
        kind=CONFIRMATION,
        recipient=order.customer_email,
        subject=subject,
        message_id=message_id,
    )
    try:
        if not _confirmation_claim.insert(record, order.pk):
            raise ConfirmationRefusedError(
                f"Refused: order {order.order_id} was cancelled; no confirmation is sent."
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
    connection = get_connection(fail_silently=False)
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("emails/order_confirmation.txt", context),
        to=[order.customer_email],
        headers={"Message-ID": message_id},
        connection=connection,
    )
    message.attach_alternative(
        render_to_string("emails/order_confirmation.html", context), "text/html"
    )
    try:
        message.send(fail_silently=False)
    except Exception as exc:
        # How far it got decides (orders.mail): delivered, in doubt, or not delivered.
        outcome = delivery_outcome(connection)
        if outcome.in_doubt:  # the claim stays: never sent twice on a guess
            raise ConfirmationUncertainError(
                f"The confirmation of order {order.order_id} was sent to the mail server, "
                f"which hung up before saying whether it took it ({type(exc).__name__}: "
                f"{exc}). Look for Message-ID {message_id} in the mail log, then run "
                f"`manage.py resolve_confirmation {order.order_id} --sent` or `--resend`."
            ) from None
        if not outcome.delivered:
            record.delete()
            raise email_failure(exc) from exc
        logger.warning(
            "order %s: the mail server took the confirmation (250), then %s: %s",
            order.order_id,
            type(exc).__name__,
            exc,
        )
    record.status = EmailStatus.SENT
    record.sent_at = timezone.now()
    if not _email_record_write.update(record.pk, status=record.status, sent_at=record.sent_at):
        # As `record.save()` would: the claim was released while the mail went out.
        raise DatabaseError(f"The confirmation record of order {order.order_id} is gone.")
    return record


# --- the fraud reviewers' alert and reminder -----------------------------------------


def reviewer_addresses() -> list[str]:
    """The addresses of those told about reviews (`selectors.reviewers_to_tell`)."""
    return list(dict.fromkeys(reviewers_to_tell().values_list("email", flat=True)))


def review_link(*, order: Order) -> str:
    """The absolute address of the order's review page in admin (through a redirect by
    order, so that the link exists before the run has recorded its wait)."""
    path = reverse("admin:orders_fraudreview_by_order", args=[order.pk])
    return f"{settings.SITE_URL.rstrip('/')}{path}"


def review_message_id(*, order: Order, kind: str) -> str:
    return f"<order-{order.pk}-{kind.replace('_', '-')}@{settings.EMAIL_MESSAGE_ID_DOMAIN}>"


# Either claim of a review's email (a new one, or one that failed before) is on disk
# before the message leaves (workflows.engine.durability).
_review_email_new = CompiledInsert(EmailRecord, durable=True)
_review_email_failed_again = CompiledUpdate(
    EmailRecord, ["order", "kind"], where=Q(status=EmailStatus.FAILED), durable=True
)


def review_email_send(*, order: Order, kind: str, deadline: datetime) -> EmailRecord | None:
    """Tell the fraud reviewers that the order's review opened (`REVIEW_ALERT`) or that
    its deadline is near (`REVIEW_REMINDER`), once. Never raises for the mail server:
    a review must not fail its order's workflow over an email.

    The same claim as the confirmation: the (order, kind) row is created `sending`
    before the message leaves. A failed send is recorded `failed` with the error, and a
    later call (the reminder sweep) claims it again. A row left `sending` by a worker
    that died between claim and send is in doubt: it is logged, not sent again (a
    duplicate alert is worse than the reminder that follows), and `ops_status` lists
    it. Returns the record, or None when there is nobody to tell (nothing is claimed,
    so the sweep tries again once someone is).
    """
    recipients = reviewer_addresses()
    if not recipients:
        logger.warning(
            "order %s: nobody to send the %s to (no active user with an email who holds "
            "%s, and no active superuser with one)",
            order.order_id,
            kind,
            DECIDE_PERMISSION,
        )
        return None
    reminder = kind == REVIEW_REMINDER
    subject = (
        f"{'Reminder: review' if reminder else 'Review'} order {order.order_id} "
        f"({amount_grouped(order.amount, order.currency)} {order.currency.upper()}) "
        f"by {deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    )
    # Rendered before the claim: only the send itself may stand between claim and mark.
    context = {
        "order": order,
        "amount": amount_grouped(order.amount, order.currency),
        "currency": order.currency.upper(),
        "deadline": deadline,
        "link": review_link(order=order),
        "reminder": reminder,
    }
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("emails/review_alert.txt", context),
        to=recipients,
        headers={"Message-ID": review_message_id(order=order, kind=kind)},
    )
    message.attach_alternative(render_to_string("emails/review_alert.html", context), "text/html")
    record, claimed = _review_email_claim(
        order=order, kind=kind, recipients=recipients, subject=subject
    )
    if record is None or not claimed:
        return record
    try:
        message.send(fail_silently=False)
    except Exception as exc:
        logger.exception("order %s: the %s was not sent; the sweep retries", order.order_id, kind)
        record.status = EmailStatus.FAILED
        record.error = f"{type(exc).__name__}: {exc}"
        record.save(update_fields=["status", "error"])
        return record
    record.status = EmailStatus.SENT
    record.sent_at = timezone.now()
    record.error = ""
    record.save(update_fields=["status", "sent_at", "error"])
    return record


def _review_email_claim(
    *, order: Order, kind: str, recipients: list[str], subject: str
) -> tuple[EmailRecord | None, bool]:
    """The (order, kind) record and whether this call claimed it (`sending`) and so may
    send: a new record, or one that `failed` before. Otherwise the record as it is: sent,
    or in doubt."""
    message_id = review_message_id(order=order, kind=kind)
    # One column for the addresses: the first ones, as many as fit.
    recipient = ", ".join(recipients)
    if len(recipient) > EMAIL_RECIPIENT_MAX_LENGTH:
        recipient = recipient[: EMAIL_RECIPIENT_MAX_LENGTH - 3].rsplit(",", 1)[0] + ", …"
    record = EmailRecord(
        order=order, kind=kind, recipient=recipient, subject=subject, message_id=message_id
    )
    try:
        _review_email_new.insert(record)
        return record, True
    except IntegrityError:
        pass
    claimed = _review_email_failed_again.update(
        order.pk,
        kind,
        status=EmailStatus.SENDING,
        recipient=recipient,
        subject=subject,
        created_at=timezone.now(),
    )
    existing = EmailRecord.objects.filter(order=order, kind=kind).first()
    if not claimed and existing is not None and existing.status == EmailStatus.SENDING:
        logger.warning(
            "order %s: the %s (Message-ID %s) was claimed at %s by a worker that stopped "
            "before the mail server confirmed it; not sent again",
            order.order_id,
            kind,
            existing.message_id,
            existing.created_at,
        )
    return existing, bool(claimed)
