"""Micro-retail's pure core (issue 19): SKUs, money and the catalog.

No I/O beyond parsing text handed in, no clocks, no storage: the fleet's ``fleet/retail/`` and
the agent's ``agent/till/`` import these so that both sides number, price and round the same way.
The conventions are documented in docs/retail.md.
"""
