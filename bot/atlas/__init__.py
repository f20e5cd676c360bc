"""The shared Atlas Admin API billing client: one import point for its public names."""

from bot.atlas._auth import ServiceAccountAuth, api_key_auth
from bot.atlas._budget import ENDPOINT_SETS, RequestBudget
from bot.atlas._client import AtlasClient, validate_cost_query
from bot.atlas._errors import (
    AtlasAPIError,
    AtlasError,
    AtlasTransportError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    MalformedResponse,
    NotAcceptable,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)
from bot.atlas._ids import GROUP_BY, SERVICES
from bot.atlas._ids import cost_token as validate_cost_token
from bot.atlas._ids import invoice_id as validate_invoice_id
from bot.atlas._ids import org_id as validate_org_id
from bot.atlas._media import API_VERSION, Operation, media_type
from bot.atlas._models import (
    CostQuery,
    CostResult,
    CostRow,
    Invoice,
    InvoiceMetadata,
    LineItem,
    NotReady,
    Payment,
    Refund,
)
from bot.atlas._transport import AtlasTransport

__all__ = [
    "API_VERSION",
    "ENDPOINT_SETS",
    "GROUP_BY",
    "SERVICES",
    "AtlasAPIError",
    "AtlasClient",
    "AtlasError",
    "AtlasTransport",
    "AtlasTransportError",
    "BadRequest",
    "Conflict",
    "CostQuery",
    "CostResult",
    "CostRow",
    "Forbidden",
    "InvalidInput",
    "Invoice",
    "InvoiceMetadata",
    "LineItem",
    "MalformedResponse",
    "NotAcceptable",
    "NotFound",
    "NotReady",
    "Operation",
    "Payment",
    "RateLimited",
    "Refund",
    "RequestBudget",
    "ServerError",
    "ServiceAccountAuth",
    "Unauthorized",
    "api_key_auth",
    "media_type",
    "validate_cost_query",
    "validate_cost_token",
    "validate_invoice_id",
    "validate_org_id",
]
