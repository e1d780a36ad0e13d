"""Orders and the fraud-review queue in admin, one module per model's pages.

Nothing here is edited through forms: orders, reviews and Stripe's events are read-only
records (`common.ReadOnlyAdminMixin`), and a review is decided only through
`review_decide` (see `fraud_reviews`). Users holding the decide permission (the "Fraud
reviewers" group) may also view the queue and the orders, without any model's view
permission. Importing the package registers every page (Django's admin autodiscovery).
"""

from . import fraud_reviews, orders, stripe_events

__all__ = ["fraud_reviews", "orders", "stripe_events"]
