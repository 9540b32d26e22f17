"""Pydantic v2 models as agent frameworks send them as tools: a nested model, an enum, a list of nested models, an
`Optional` field (`anyOf` with null) and a recursive model, all of which become `$defs`/`$ref` in the schema (a
function's parameters used to be refused with "$ref ... points nowhere"). Shared by the SDK, LangChain and
instructor smoke tests; the length bounds keep a 135M model's answers short.
"""

from enum import Enum
from typing import List, Optional

from pydantic import BaseModel, Field

ORDER_PROMPT = "Order two large pizzas and one small salad for Ann at 1 Main Street, Springfield."
TREE_PROMPT = "Draw a tree: root A with children B and C."


class Size(str, Enum):
    small = "small"
    medium = "medium"
    large = "large"


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)


class Item(BaseModel):
    name: str = Field(max_length=30)
    size: Size
    quantity: int = Field(ge=1, le=10)


class Order(BaseModel):
    """Place an order for a customer."""

    customer: str = Field(max_length=30)
    address: Address
    items: List[Item] = Field(min_length=1, max_length=3)
    note: Optional[str] = Field(default=None, max_length=40)


class Tree(BaseModel):
    """A small tree of labels."""

    label: str = Field(max_length=12)
    children: List["Tree"] = Field(max_length=2)
