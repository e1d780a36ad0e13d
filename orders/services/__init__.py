"""Writes of the orders domain. The workflow, the agent's tools, the API, admin and the
commands all go through these functions, imported from the module of their concern:
`intake` (order_create), `payments` (the money and its status), `reviews` (the fraud
review), `cancellation` (order_cancel) and `lifecycle` (what the order's run writes)."""
