"""Python clients of the DSA-110 continuum imaging data-products API (dsa110.contimg.v1).

from dsa110.contimg.client import Client, ms_name

with Client("127.0.0.1:50051") as client:
    for image in client.list_images(filter="center_dec_deg > 54 AND noise_jy < 0.001"):
        print(image.name, image.noise_jy)
"""

from ._async import AsyncClient
from ._sync import Client
from .config import ClientConfig, RetryPolicy
from .errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    ContimgError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from .names import image_id, image_name, job_id, job_name, ms_name, ms_path, source_id, source_name
from .pagers import AsyncPager, Pager
from .watch import is_final

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncPager",
    "CallCancelledError",
    "Client",
    "ClientConfig",
    "ContimgError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "Pager",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "image_id",
    "image_name",
    "is_final",
    "job_id",
    "job_name",
    "ms_name",
    "ms_path",
    "source_id",
    "source_name",
]
