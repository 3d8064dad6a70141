"""ImageService."""

from __future__ import annotations

from dsa110.contimg.v1 import images_pb2 as pb
from google.protobuf import empty_pb2

from ..accesslog import Recorder
from ..domain import names
from ..domain.checks import Checker
from ..domain.errors import NotFound
from ..domain.listing import IMAGE_DEFAULT_ORDER, IMAGE_FIELDS
from ..domain.records import IMAGE_UPDATABLE_FIELDS, Image
from ..domain.validation import check_image
from ..readcache import ReadCache, no_cache
from ..repositories.protocols import ImageRepository
from ..rpc_types import Ctx
from ..slices import map_in_slices
from .admission import OPEN, Admission
from .common import SEARCH_MAX_PAGE_SIZE, Paging, batch_keys, idempotency, list_reply, require
from .convert import image_from_proto, image_to_proto
from .encoded import Encoded, double_field, field_bytes, page, unframe
from .envelope import read, unary


def _version(img: Image) -> tuple[int, int]:
    return img.id, img.update_time


def _framed_image(img: Image) -> bytes:
    return field_bytes(1, image_to_proto(img).SerializeToString())


_ALL_FIELDS = tuple(dict.fromkeys(f for attrs in IMAGE_UPDATABLE_FIELDS.values() for f in attrs))


class ImageServicer:
    """dsa110.contimg.v1.ImageService (registered by servicers/handlers.py: reads leave as Encoded bytes)."""

    admission: Admission = OPEN  # the server sets its own (tokens, concurrency limit)
    reads: ReadCache = no_cache()  # the server sets its own (readcache.py)
    recorder: Recorder | None = None  # the server's, when it logs or counts calls (accesslog.py)

    def __init__(self, repo: ImageRepository, paging: Paging):
        self.repo = repo
        self.paging = paging

    def _encoded(self, img: Image) -> bytes:
        """The image as field 1 (of BatchGet/List responses and of ImageMatch)."""
        return self.reads.item(("image", img.id, img.update_time), lambda: _framed_image(img))

    @read
    async def GetImage(self, request: pb.GetImageRequest, context: Ctx) -> Encoded[pb.Image]:
        image_id = names.parse_image_name(request.name)
        [img] = await self.repo.get_many([image_id])
        if img is None:
            raise NotFound("IMAGE", names.image_name(image_id))
        # The same bytes lists use (framed as their field 1), without the frame.
        return Encoded(pb.Image, unframe(self._encoded(img)))

    @read
    async def BatchGetImages(
        self, request: pb.BatchGetImagesRequest, context: Ctx
    ) -> Encoded[pb.BatchGetImagesResponse]:
        ids = batch_keys(request.names, names.parse_image_name)
        found = await self.repo.get_many(ids)
        for image_id, img in zip(ids, found, strict=True):
            if img is None:
                raise NotFound("IMAGE", names.image_name(image_id))
        return Encoded(pb.BatchGetImagesResponse, b"".join(await map_in_slices(self._encoded, [i for i in found if i])))

    @read
    async def ListImages(self, request: pb.ListImagesRequest, context: Ctx) -> Encoded[pb.ListImagesResponse]:
        async def items(refs: list[tuple[int, int]]) -> list[bytes]:
            return await self.reads.items_for_refs("image", refs, self.repo.get_many, _version, _framed_image)

        return await list_reply(
            self.paging,
            "ListImages",
            request,
            IMAGE_FIELDS,
            IMAGE_DEFAULT_ORDER,
            self.repo.list_refs,
            items,
            pb.ListImagesResponse,
        )

    @read
    async def SearchImages(self, request: pb.SearchImagesRequest, context: Ctx) -> Encoded[pb.SearchImagesResponse]:
        c = Checker()
        c.ra("ra_deg", request.ra_deg)
        c.dec("dec_deg", request.dec_deg)
        query, fp = self.paging.query(
            "SearchImages",
            request,
            IMAGE_FIELDS,
            (),
            sortable=False,
            bound_to=(request.ra_deg, request.dec_deg),
            max_page_size=SEARCH_MAX_PAGE_SIZE,
            checks=c,
        )
        found = await self.repo.search(request.ra_deg, request.dec_deg, query)
        matches = [field_bytes(1, self._encoded(m.item) + double_field(2, m.separation_deg)) for m in found.items]
        return page(pb.SearchImagesResponse, matches, self.paging.next_token(found, fp), found.total_size)

    @unary
    async def CreateImage(self, request: pb.CreateImageRequest, context: Ctx) -> pb.Image:
        c = Checker()
        msg = request.image
        path = ms_path = ""
        present = require(request, "image", c)
        if present:
            path = c.parsed(names.check_path, msg.path, "image.path") or ""
            if not msg.measurement_set:
                c.add("image.measurement_set", "required")
            else:
                ms_path = c.parsed(names.parse_ms_name, msg.measurement_set, "image.measurement_set") or ""
        record = image_from_proto(msg, 0, ms_path)._replace(path=path)
        if present:
            check_image(record, _ALL_FIELDS, "image", c)
        idem = idempotency("CreateImage", request, c)
        c.raise_if_any()
        return image_to_proto(await self.repo.create(record, idem, actor=self.admission.actor(context)))

    @unary
    async def UpdateImage(self, request: pb.UpdateImageRequest, context: Ctx) -> pb.Image:
        c = Checker()
        image_id = 0
        if require(request, "image", c):
            image_id = c.parsed(names.parse_image_name, request.image.name, "image.name") or 0
        if not request.update_mask.paths:
            c.add("update_mask", "required: name the fields to update")
        fields: list[str] = []
        for i, p in enumerate(request.update_mask.paths):
            attrs = IMAGE_UPDATABLE_FIELDS.get(p)
            if attrs is None:
                c.add(f"update_mask.paths[{i}]", f"{p!r} is not an updatable Image field")
            else:
                fields.extend(a for a in attrs if a not in fields)
        # The values of the valid paths are checked even when other paths are not.
        record = image_from_proto(request.image, image_id, "")
        check_image(record, fields, "image", c)
        idem = idempotency("UpdateImage", request, c)
        c.raise_if_any()
        return image_to_proto(await self.repo.update(record, fields, idem, actor=self.admission.actor(context)))

    @unary
    async def DeleteImage(self, request: pb.DeleteImageRequest, context: Ctx) -> empty_pb2.Empty:
        await self.repo.delete(names.parse_image_name(request.name), request.force)
        return empty_pb2.Empty()
