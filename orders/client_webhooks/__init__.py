"""Webhooks to the intake clients, a Django app of its own (label `client_webhooks`):
the endpoints a client registers (`models`, the `api` and `admin`), the events an order
emits (`services.order_event_emit`, its payload from `orders.presenters`), and their
durable delivery (the `webhook_delivery` workflow, `delivery`).

Inside `orders/` because the service's layout is fixed (DESIGN.md); it depends on the
orders domain, and the orders services call `order_event_emit` where an order changes.
"""
