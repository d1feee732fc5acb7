"""Alerts: ``rules`` judges the fleet's state (low battery, a forecast short of the event's end, a
device offline...), ``store`` keeps each alert and its history, ``notify`` tells a webhook."""

from fleet.alerts.rules import (RULES, SEVERITIES, STATES, AlertConfig, Assessment, EvalResult, Evaluator, Firing, assess,
                                evaluate)

__all__ = ["RULES", "SEVERITIES", "STATES", "AlertConfig", "Assessment", "EvalResult", "Evaluator", "Firing", "assess",
           "evaluate"]
