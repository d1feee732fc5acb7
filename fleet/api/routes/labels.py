"""Labels from the dashboard (issue 19): ``POST /api/v1/kits/{kit}/labels`` asks the kit's agent to
print product labels on one of the kit's printers: all stock, one product's stock, or a reprint of
a count of one product's damaged labels.

The fleet plans the whole request against the kit's catalog first, with the CLI's batch rules
(kits/retail/batch.py, for the receipt printer the agent prints labels on), so a SKU the catalog
lacks or a label that cannot fit refuses the request with every reason and sends nothing. What
goes to the agent is a ``labels`` command (kits/retail/labelcmd.py): SKUs and counts with what each
label prints, never rendered labels (a command is at most 4096 bytes); a request too big for one
is split into parts. The agent renders and queues them (agent/labels_cmd.py) and its ack settles
each command, as for every command (fleet/commands/): the audit log has the request and each
command with who asked and how it ended.

ops for any kit, crew for their own (another kit is a 404), venue users nothing (403).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleet import db
from fleet.api.deps import StoreDep, get_publisher
from fleet.api.schemas import BAD_BODY, NO_BROKER, CommandOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.commands import MAX_TTL_S, PayloadTooLarge, PublishFailed, UnknownDevice
from fleet.db import now_ms
from kits.contract import EVENT_ID_RE, MAX_DEVICE_PAYLOAD, Command, encode
from kits.retail import batch
from kits.retail.labelcmd import ACTION, DEFAULT_TEMPLATE, LabelItem, LabelsArgs
from kits.retail.labels import TEMPLATES, LabelError, template

router = APIRouter(prefix="/api/v1/kits/{kit_id}", tags=["retail"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)

KIND = "escpos"  # the agent prints labels through its receipt printers' queues (agent/labels_cmd.py)


class LabelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=f"^{EVENT_ID_RE}$", description="the event whose catalog the labels come from")
    sku: str | None = Field(None, min_length=1, max_length=13, description="one product; all products when left out")
    count: int | None = Field(None, ge=1, le=batch.MAX_COPIES,
                              description="a reprint: this many labels of ``sku`` (damaged ones)")
    all: bool = Field(False, description="one label per unit of stock carried (of ``sku``, or of every product)")
    template: str = Field(DEFAULT_TEMPLATE, min_length=1, max_length=40,
                          description=f"a built-in template: {', '.join(sorted(TEMPLATES))}")
    printer: str | None = Field(None, min_length=1, max_length=64,
                                description="one of the kit's printers (a device id); its first one when left out")
    ttl_s: int = Field(600, ge=10, le=MAX_TTL_S, description="the agent prints nothing it gets after this")


class LabelsOut(BaseModel):
    kit: str
    event: str
    template: str
    agent: str
    printer: str
    labels: int = Field(description="labels asked of the agent")
    skus: int
    skipped: list[str] = Field(description="SKUs with no stock: nothing to label under all-stock")
    commands: list[CommandOut] = Field(description="the labels command(s) sent to the agent, pending until it acks")


def _kit_printers(store, kit_id: str) -> list[str] | None:
    """The kit's printers by id; None for no such kit."""
    with store.engine.connect() as conn:
        if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit_id)).first() is None:
            return None
        d = db.devices.c
        return list(conn.execute(select(d.id).where(d.kit_id == kit_id, d.role == "printer").order_by(d.id)).scalars())


def _want(body: LabelsIn) -> tuple[list[str] | None, bool, int]:
    """(SKUs or None for all, all-stock, copies), or a 422 for a request that says neither or both."""
    if body.sku is None and not body.all:
        raise HTTPException(status_code=422, detail="say which labels: all (every product's stock), sku with all "
                                                    "(one product's stock) or sku with count (a reprint)")
    if body.all and body.count is not None:
        raise HTTPException(status_code=422, detail="count is for a reprint of one product; all prints one label "
                                                    "per unit of stock: send one or the other")
    return ([body.sku.upper()] if body.sku else None), body.all, body.count or 1


def _items(plan: batch.Plan) -> list[LabelItem]:
    """One item per SKU (the plan splits more than 999 labels of a SKU into several jobs)."""
    items: dict[str, LabelItem] = {}
    for job in plan.jobs:
        have = items.get(job.sku)
        if have is None:
            f = job.fields
            items[job.sku] = LabelItem(sku=job.sku, n=job.copies, name=f["name"], variant=f["variant"] or "",
                                       price=f["price"], currency=f["currency"])
        else:
            items[job.sku] = have.model_copy(update={"n": have.n + job.copies})
    return list(items.values())


def _fits(args: LabelsArgs) -> bool:
    ts = now_ms()
    cmd = Command(id="0" * 16, ts=ts, expires=ts, action=ACTION, args=args.model_dump(mode="json"))
    return len(encode(cmd)) <= MAX_DEVICE_PAYLOAD


def _parts(base: dict, items: list[LabelItem]) -> list[LabelsArgs]:
    """The request as commands that each fit the contract's limit, numbered (part, of n)."""
    chunks: list[list[LabelItem]] = [[]]
    for item in items:
        trial = chunks[-1] + [item]
        if chunks[-1] and not _fits(LabelsArgs(**base, items=trial, part=(999, 999))):
            chunks.append([item])
        else:
            chunks[-1] = trial
    parts = [LabelsArgs(**base, items=c, part=(i, len(chunks))) for i, c in enumerate(chunks, start=1)]
    if not all(_fits(p) for p in parts):  # one item alone too big
        raise PayloadTooLarge(f"a labels command would be over the contract's {MAX_DEVICE_PAYLOAD} bytes")
    return parts


@router.post("/labels", status_code=202, response_model=LabelsOut, responses=refusals({
    **BAD_BODY, 404: "no such kit, no catalog for the event, or no such printer in the kit",
    409: "the kit has no agent or no printer to print on",
    413: "a label's text is over a command's size limit",
    422: "the request says neither which labels nor how many, or labels are refused (each SKU with its reason); "
         "nothing is sent", **NO_BROKER}))
def print_labels(kit_id: str, body: LabelsIn, request: Request, store: StoreDep, user: UserDep):
    """Print labels on the kit's printer: every product's stock (``all``), one product's stock
    (``sku`` and ``all``) or a reprint (``sku`` and ``count``). 202: sent to the kit's agent as
    ``labels`` command(s), whose acks say what was queued on the printer."""
    printers = _kit_printers(store, kit_id)
    if printers is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    skus, all_stock, copies = _want(body)
    try:
        t = template(body.template)
    except LabelError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if body.printer is not None and body.printer not in printers:
        raise HTTPException(status_code=404, detail=f"no printer {body.printer!r} in kit {kit_id}")
    products = batch.select(store.retail.catalog(kit_id, body.event))
    if not products:
        raise HTTPException(status_code=404, detail=f"kit {kit_id} has no catalog for event {body.event}")
    plan = batch.plan(products, t, skus, all_stock=all_stock, copies=copies, kind=KIND)
    if plan.refused:
        raise HTTPException(status_code=422, detail=f"{len(plan.refused)} refused, nothing sent: "
                                                    + "; ".join(plan.refused))
    if not plan.jobs:
        raise HTTPException(status_code=422, detail=f"no stock, no labels: {', '.join(plan.skipped)}")
    info = store.registry.kit_info(kit_id)
    agent = info.agent if info is not None else None
    if agent is None:
        raise HTTPException(status_code=409, detail=f"kit {kit_id} has no agent to print labels")
    printer = body.printer or (printers[0] if printers else None)
    if printer is None:
        raise HTTPException(status_code=409, detail=f"kit {kit_id} has no printer")
    items = _items(plan)
    base = dict(event=body.event, template=t.name, printer=printer)
    try:
        parts = _parts(base, items)
        publisher = get_publisher(request)
        sent = [publisher.send_command(agent, ACTION, p.model_dump(mode="json"), body.ttl_s, requested_by=user.name)
                for p in parts]
    except UnknownDevice:
        raise HTTPException(status_code=409, detail=f"kit {kit_id}'s agent {agent} is not registered") from None
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return LabelsOut(kit=kit_id, event=body.event, template=t.name, agent=agent, printer=printer,
                     labels=plan.labels, skus=len(items), skipped=plan.skipped, commands=sent)
