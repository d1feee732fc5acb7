"""The ledger: every telemetry, event and ack message a device sent, stored once, in arrival order.

``model`` is what ingest hands over (batches of validated messages, states and rejections),
``store`` the batched writes (deduplication by the database's unique key, the commit that
receipts promise), the stream counters and dead letters, ``statements`` ingest's prebuilt SQL,
``gaps`` the detector that asks devices to resend what never arrived.
"""

from fleet.ledger.model import Batch, BatchResult, LedgerMessage, RejectedMessage
from fleet.ledger.statements import CLOCK_LAG_WINDOW_MS

__all__ = ["Batch", "BatchResult", "LedgerMessage", "RejectedMessage", "CLOCK_LAG_WINDOW_MS"]
