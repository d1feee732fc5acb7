"""Micro-retail on the fleet (issue 19): each kit's catalog per event, with versioned prices.

tables.py holds the tables (migration 0013), store.py the reads and the all-or-nothing import;
the routes are fleet/api/routes/retail.py. The catalog's rules (SKUs, money, the CSV) are the
kits' own, in kits/retail/: the fleet checks with the same code the CLI does.
"""
