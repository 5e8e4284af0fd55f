"""A cost limit for GraphQL queries: refuse, before running it, a query that could ask for too much.

Each field costs 1 and its selection's cost; a field that returns a list multiplies its selection by
the list's `limit` argument (or the default list size when it has none, or when the limit is a
variable), so nested lists are priced as the product they can become. Fragments are priced where they
are spread. Introspection fields cost 1 each, their lists counted once (the schema bounds them, not the
data), and an operation introspects at most once (`MAX_INTROSPECTIONS` fields `__schema` or `__type`,
however aliased or spread): introspection was free, and twenty aliased full introspections in one
request (350 KB) held the event loop for seconds. Before any rule, `FragmentLimit` refuses a document
whose fragments spread to more than `MAX_SPREAD` selections: the rules (this one, and strawberry's depth
and alias limits) walk a fragment wherever it is spread, so twenty fragments that each spread the next
twice (700 characters) held the event loop 37 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SchemaMetaFieldDef,
    SelectionSetNode,
    TypeMetaFieldDef,
    TypeNameMetaFieldDef,
    ValidationRule,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

MAX_COST = 10000
DEFAULT_LIST = 10
MAX_LIST = 100
MAX_NESTING = 30
MAX_INTROSPECTIONS = 1
MAX_SPREAD = 10000
_INTROSPECTION = ("__schema", "__type")


def _limit(node: FieldNode) -> int:
    for argument in node.arguments or ():
        if argument.name.value == "limit":
            if isinstance(argument.value, IntValueNode):
                return min(max(int(argument.value.value), 0), MAX_LIST)
            return MAX_LIST
    return DEFAULT_LIST


def _field(parent: GraphQLObjectType, name: str, schema: GraphQLSchema) -> GraphQLField | None:
    """The field a selection names, the introspection fields (`__schema`, `__type`, `__typename`) too."""
    if name == "__typename":
        return TypeNameMetaFieldDef
    if parent is schema.query_type and name in _INTROSPECTION:
        return SchemaMetaFieldDef if name == "__schema" else TypeMetaFieldDef
    return parent.fields.get(name)


def _count(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    counted: dict[str, int],
    deep: bool,
) -> int:
    """The fields a selection set holds with its fragments spread (`deep`), or the `__schema` and
    `__type` fields among the root's; each fragment counted once (in `counted`), so this takes linear
    time however often a fragment is spread."""
    total = 0
    for selection in selection_set.selections if selection_set is not None else ():
        if isinstance(selection, FieldNode):
            inner = _count(selection.selection_set, fragments, counted, deep) if deep else 0
            total += (1 + inner) if deep else selection.name.value in _INTROSPECTION
        elif isinstance(selection, InlineFragmentNode):
            total += _count(selection.selection_set, fragments, counted, deep)
        elif selection.name.value in fragments:
            name = selection.name.value
            if name not in counted:
                counted[name] = 0  # a cycle counts nothing (validation refuses it)
                counted[name] = _count(fragments[name].selection_set, fragments, counted, deep)
            total += counted[name]
    return total


def _fragments(definitions: Iterable[object]) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)}


class FragmentLimit(SchemaExtension):
    """Refuse, instead of validating it, a document whose fragments spread to more than `MAX_SPREAD`
    fields (a validation that an extension has already answered is not run)."""

    def on_validate(self) -> Iterator[None]:
        document = self.execution_context.graphql_document
        if document is not None:
            fragments, sizes = _fragments(document.definitions), {}
            for definition in document.definitions:
                if (
                    isinstance(definition, OperationDefinitionNode)
                    and _count(definition.selection_set, fragments, sizes, deep=True) > MAX_SPREAD
                ):
                    message = (
                        f"the query spreads its fragments to more than {MAX_SPREAD} fields; ask for less"
                    )
                    self.execution_context.pre_execution_errors = [GraphQLError(message, definition)]
                    break
        yield


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
            field = _field(parent, name, schema)
            if field is None:
                continue
            field_type = field.type
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
            listed = isinstance(field_type, GraphQLList) and not parent.name.startswith("__")
            total += (_limit(selection) if listed else 1) * (1 + child)
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
    """Refuse an operation whose estimated cost is over `MAX_COST`, or that introspects more than
    `MAX_INTROSPECTIONS` times."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: object) -> None:
        schema = self.context.schema
        fragments = _fragments(self.context.document.definitions)
        root = schema.get_root_type(node.operation)
        if _count(node.selection_set, fragments, {}, deep=False) > MAX_INTROSPECTIONS:
            self.report_error(
                GraphQLError(
                    f"an operation may hold at most {MAX_INTROSPECTIONS} __schema or __type field, "
                    "however aliased or spread; one __schema answers the whole schema",
                    node,
                )
            )
            return
        cost = _cost(node.selection_set, root, fragments, schema)
        if cost > MAX_COST:
            self.report_error(
                GraphQLError(
                    f"the query would cost {cost}, more than the {MAX_COST} allowed; ask for less", node
                )
            )
