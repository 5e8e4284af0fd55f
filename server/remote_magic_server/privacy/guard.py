"""The differencing guard: refuse a release whose row set nearly equals one already released.

Two releases over row sets that differ by a single row let an analyst subtract one from the other and
read that row (DataSHIELD only warns about this, dsBase#251; we refuse). Pure: the caller passes the
new sets, the sets already released to the same user on the same dataset, and the table's size. A set
identical to an earlier one (difference 0) is fine: it releases nothing new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyroaring import BitMap

from remote_magic.contract.codes import Refusal


def check_differencing(
    new_sets: Mapping[str, BitMap], released: Iterable[BitMap], table_rows: int, min_count: int
) -> None:
    """Raise Refusal when a new set is within `min_count` rows of the table or of a released set.

    The message names the rule and the role of the set (training, evaluation, admitted), never the
    rows or the size of the difference."""
    earlier = list(released)
    for role, rows in new_sets.items():
        if 0 < table_rows - len(rows) < min_count:
            raise Refusal(
                "differencing_refused",
                f"the {role} rows differ from the whole table by fewer than {min_count} rows "
                "(complement rule); widen or narrow the filter",
            )
        for other in earlier:
            if 0 < rows.symmetric_difference_cardinality(other) < min_count:
                raise Refusal(
                    "differencing_refused",
                    f"the {role} rows differ from rows already released to you by fewer than "
                    f"{min_count} rows (differencing rule); choose a filter that changes more rows",
                )
