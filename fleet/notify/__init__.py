"""Notifications that reach the right person: targets (webhooks) with filters per kit, audience
and rule, in escalation order; the escalation policy; every send with its outcome.

``model`` is the pure logic (which targets hear of an alert, the next step of its escalation),
``tables``/``store`` the database (migration 0016), ``delivery`` one attempt at a webhook with its
retries and failures counted (``metrics``). The thread that plans and delivers is
fleet/alerts/notify.py; the routes are fleet/api/routes/notify.py, the ops page static/notify.js.
"""
