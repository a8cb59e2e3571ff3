"""An account-balance read model for strong-consistency tests and benchmarks.

Each ``BalanceSet`` event carries an absolute balance, as a read-modify-write
writer computes it: concurrent writers of one account lose updates unless the
account is strong. The ``applied`` counters count events per account, so a
lost update (balance short of the count) is told apart from a lost event.
"""

from __future__ import annotations

from toolkit.envelope import Envelope
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch

BALANCE_SET = "kct.examples.accounts.BalanceSet"


def balances(name: str, topic: str) -> Projection:
    projection = Projection(name, [topic])

    @projection.on(BALANCE_SET)
    def balance_set(event: Envelope, view: ReadModelBatch) -> None:
        view.put(
            f"account:{event.aggregate_id}",
            {"balance": event.payload["balance"], "seq": event.sequence},
        )
        view.increment("applied", event.aggregate_id)

    return projection


def balance_event(account: str, balance: int, sequence: int, writer: str = "") -> Envelope:
    return Envelope(
        BALANCE_SET,
        "account",
        account,
        sequence,
        {"account_id": account, "balance": balance, "writer": writer},
    )
