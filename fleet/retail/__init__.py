"""Micro-retail on the fleet (issue 19): each kit's catalog per event, with versioned prices, and
the orders and refunds its till uploads.

tables.py holds the catalog's tables (migration 0013), store.py its reads and the all-or-nothing
import; order_tables.py the orders' (migration 0014), orders.py their recording at ingest (one per
id, conflicts kept) and reads, sales.py sales and stock added up from them, pending.py each kit's
latest report of orders not yet uploaded, push.py the catalog sent to the kit's till. The routes
are fleet/api/routes/retail.py (catalog) and retail_orders.py (orders). The catalog's rules (SKUs,
money, the CSV) are the kits' own, in kits/retail/: the fleet checks with the same code the CLI does.
"""
