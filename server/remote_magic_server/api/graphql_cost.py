"""A cost limit for GraphQL queries: refuse, before running it, a query that could ask for too much.

Each field costs 1 and its selection's cost; a field that returns a list multiplies its selection by
the list's `limit` argument (or the default list size when it has none, or when the limit is a
variable), so nested lists are priced as the product they can become. Fragments are priced where they
are spread. Introspection fields are free: they are bounded by the schema, not by the data.
"""

from __future__ import annotations

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
)

MAX_COST = 10000
DEFAULT_LIST = 10
MAX_LIST = 100
MAX_NESTING = 30


def _limit(node: FieldNode) -> int:
    for argument in node.arguments or ():
        if argument.name.value == "limit":
            if isinstance(argument.value, IntValueNode):
                return min(max(int(argument.value.value), 0), MAX_LIST)
            return MAX_LIST
    return DEFAULT_LIST


def _cost(
    selection_set: SelectionSetNode | None,
    parent: GraphQLObjectType | None,
    fragments: dict[str, FragmentDefinitionNode],
    schema,
    nesting: int = 0,
) -> int:
    if selection_set is None or parent is None or nesting > MAX_NESTING:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if name.startswith("__") or name not in parent.fields:
                continue
            field_type = parent.fields[name].type
            if isinstance(field_type, GraphQLNonNull):
                field_type = field_type.of_type
            child_type = get_named_type(field_type)
            child = _cost(
                selection.selection_set,
                child_type if isinstance(child_type, GraphQLObjectType) else None,
                fragments,
                schema,
                nesting + 1,
            )
            total += (_limit(selection) if isinstance(field_type, GraphQLList) else 1) * (1 + child)
        else:
            if isinstance(selection, FragmentSpreadNode):
                fragment = fragments.get(selection.name.value)
                if fragment is None:
                    continue
                inner, condition = fragment.selection_set, fragment.type_condition.name.value
            else:
                assert isinstance(selection, InlineFragmentNode)
                inner = selection.selection_set
                condition = selection.type_condition.name.value if selection.type_condition else parent.name
            target = schema.get_type(condition)
            total += _cost(
                inner,
                target if isinstance(target, GraphQLObjectType) else None,
                fragments,
                schema,
                nesting + 1,
            )
    return total


class CostLimit(ValidationRule):
    """Refuse an operation whose estimated cost is over `MAX_COST`."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: object) -> None:
        schema = self.context.schema
        fragments = {
            d.name.value: d
            for d in self.context.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        root = schema.get_root_type(node.operation)
        cost = _cost(node.selection_set, root, fragments, schema)
        if cost > MAX_COST:
            self.report_error(
                GraphQLError(
                    f"the query would cost {cost}, more than the {MAX_COST} allowed; ask for less", node
                )
            )
