"""Request and response schemas, apart from database rows."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from service.search.filters import FILTERS, UTCDateTime, json_integer
from service.search.query_vector import DEFAULT_TEXT_WEIGHT, MAX_EXAMPLES

MAX_DESCRIPTION = 512


# names and ids: no control characters (C0, DEL, C1), a visible first and last character once
# surrounding spaces go: not a space nor an invisible one (zero-width spaces and joiners, the
# byte order mark, soft hyphen, bidi controls), which would make two names look the same
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
INVISIBLE = (r"\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
             r"\ufeff")  # the inside of a regex class, as escapes every dialect reads
_INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")
# white space that is not a control character, spelt out: \s differs between regex dialects
# (ECMAScript's, which schema-driven clients follow, takes U+FEFF for a space)
_SPACES = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PRINTABLE = f"[^{_CONTROL}]"
_VISIBLE = f"[^{_SPACES}{_CONTROL}{INVISIBLE}]"
_SPACE = f"[{_SPACES}]"
LABEL_PATTERN = f"^{_SPACE}*{_VISIBLE}(?:{_PRINTABLE}*{_VISIBLE})?{_SPACE}*$"


def _visible_edges(value: object) -> object:
    """A clear message for an invisible first or last character (the pattern refuses it too)."""
    text = value.strip() if isinstance(value, str) else ""
    for char in {text[:1], text[-1:]} - {""}:
        if _INVISIBLE_RE.fullmatch(char):
            raise ValueError(f"starts or ends with an invisible character (U+{ord(char):04X}); "
                             "type the name without it")
    return value


# the constraints come first so that the schema shows them (the before-validator wrapping them
# still runs first: its message); then surrounding spaces go
Label = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=LABEL_PATTERN),
                  BeforeValidator(_visible_edges), AfterValidator(str.strip)]


# in a JSON body: at most 2**53, the largest integer a JSON number (a double) holds exactly;
# above it a client's or a schema validator's double rounds across the bound (2**62 did)
CropIdValue = Annotated[int, Field(ge=1, le=2**53), BeforeValidator(json_integer)]
MAX_EXCLUDE = 200  # crops an operator may dismiss from one search


_SEARCH_EXAMPLE = {"description": "a woman in a red coat with a black backpack", "top_k": 10,
                   "cameras": ["gate-3"], "time_from": "2026-05-01T08:00:00Z",
                   "time_to": "2026-05-01T18:00:00Z", "group_by": "crop", "cursor": None}


_LIKE_EXAMPLE = {"like": [42, 97], "description": "carrying a black backpack",
                 "text_weight": 0.5, "top_k": 10}


class _Ranking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: (Annotated[str, Field(min_length=1, max_length=MAX_DESCRIPTION)]
                  | SkipJsonSchema[None]) = Field(None, examples=[
            "a man in a blue jacket and black trousers"],
        description="What the person looks like, in plain words. Required unless `like` (or "
        "an image) is given.")
    # no `| None`: a null is refused as not a number; omitted, the served default applies
    text_weight: Annotated[float, BeforeValidator(json_integer)] = Field(  # type: ignore[assignment]
        None, ge=0, le=1, examples=[0.5],
        description="With both a description and examples (`like` or an image): the query is "
        "`text_weight * text + (1 - text_weight) * examples`, each unit-normalised per part. "
        "Default: the weight chosen on dev for the served model (its calibration sidecar, "
        f"`tbps calibrate`), else {DEFAULT_TEXT_WEIGHT}. Ignored without both.")
    top_k: Annotated[int, BeforeValidator(json_integer)] = Field(
        10, ge=1, le=100, examples=[10],
        description="Hits (or persons) per page, 1-100 (a JSON number, not a string or bool).")


# every filter's request fields, from its spec (service.search.filters.FILTERS)
_Filtered = create_model("_Filtered", __base__=_Ranking,
                         **{name: fld for spec in FILTERS for name, fld in spec.fields.items()})


class SearchOptions(_Filtered):  # type: ignore[misc, valid-type]
    """A search's description (optional here), filters and paging: the fields `POST /search`
    and `POST /search/image` share."""

    group_by: Literal["crop", "person"] = Field(
        "crop", description="`crop`: ranked crops in `hits`. `person`: one entry per person/"
        "track in `persons`, with its best crops and time span.", examples=["person"])
    cursor: str | None = Field(None, max_length=2048, description="`next_cursor` of the previous "
                               "page, with the other fields unchanged.", examples=[None])
    exclude: Annotated[list[CropIdValue], Field(max_length=MAX_EXCLUDE)] = Field(
        default_factory=list, examples=[[7, 19]],
        description=f"Crops the operator dismissed (\"not this person\"), at most {MAX_EXCLUDE}: "
        "left out of the hits and of every following page (send the same list with `cursor`). "
        "An unknown or deleted id is ignored; a repeated one counts once.")

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:  # given as null (an omitted description is not validated)
            raise ValueError("description is null: omit it, or describe the person")
        value = value.strip()
        if all(unicodedata.category(c) in ("Cc", "Cf") or c.isspace() for c in value):
            raise ValueError("description is blank: describe the person, e.g. "
                             "'a man in a red jacket'")
        return value

    @model_validator(mode="after")
    def _filter_checks(self) -> SearchOptions:
        for spec in FILTERS:
            if spec.check is not None:
                spec.check(self.filter_values())
        return self

    def filter_values(self) -> dict[str, Any]:
        """The filters' fields that are set: request field -> value."""
        return {name: getattr(self, name) for spec in FILTERS for name in spec.fields
                if getattr(self, name) is not None}


ExampleIds = Annotated[list[CropIdValue], Field(min_length=1, max_length=MAX_EXAMPLES)]


class SearchRequest(SearchOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [_SEARCH_EXAMPLE, _LIKE_EXAMPLE],
        "anyOf": [{"required": ["description"]}, {"required": ["like"]}]})

    like: ExampleIds | SkipJsonSchema[None] = Field(
        None, examples=[[42, 97]],
        description="Find crops that look like these (1-10 crop ids from earlier results): "
        "the query is built from their stored vectors, and they are left out of the hits. "
        "An unknown or deleted id is a 404 naming it.", json_schema_extra={"uniqueItems": True})

    @field_validator("like")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is None:  # given as null
            raise ValueError("like is null: omit it, or give 1-10 crop ids")
        if len(set(value)) != len(value):
            raise ValueError("like repeats a crop id: give each example once")
        return value

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchRequest:
        if self.description is None and self.like is None:
            raise ValueError("give a description, example crop ids in `like`, or both")
        return self


MatchLevel = Literal["strong", "possible", "weak"]
CONFIDENCE_DOC = ("Probability (0-1, 3 decimals) that this is the described person (or the "
                  "example's), from the score by a map fitted on dev for the served model "
                  "(`tbps calibrate`): the description's map for a description, the example "
                  "map for `like` or a photo, the blended map for both. Null when the model "
                  "has no calibration. Calibrated for a gallery like dev (200 people); in a "
                  "larger gallery read it as optimistic.")
MATCH_DOC = ("`strong` (confidence >= 0.5), `possible` (>= 0.2) or `weak` (below); null without "
             "calibration. A page shows `weak` hits as unlikely to be the person.")


class SearchHit(BaseModel):
    crop_id: int = Field(..., description="Crop id.", examples=[42])
    score: float = Field(..., description="Model similarity, the sum of `parts`: one cosine "
                         "per unit block of the vector (global, and the stripes together), so "
                         "it lies in [-score_max, score_max]; higher is a better match. Compare "
                         "scores within one search, not across queries.", examples=[1.159])
    camera: str | None = Field(None, description="Camera name.", examples=["gate-3"])
    captured_at: UTCDateTime | None = Field(None, description="When the crop was captured (UTC).",
                                         examples=["2026-05-01T12:30:00Z"])
    person_id: str | None = Field(None, description="Person/track id, when known.",
                                  examples=["track-0017"])
    width: int = Field(..., description="Image width in pixels.", examples=[64])
    height: int = Field(..., description="Image height in pixels.", examples=[128])
    image_url: str = Field(..., description="The stored crop.", examples=["/crops/42/image"])
    thumbnail_url: str = Field(..., description="A small JPEG of the crop.",
                               examples=["/crops/42/thumbnail"])
    file_name: str | None = Field(None, description="The file name it was ingested or "
                                  "uploaded under.", examples=["CUHK01/0363004.png"])
    parts: dict[str, float] = Field(
        default_factory=dict, description="Per-part scores (global, and each stripe for models "
        "that have them) summing to score; the part layout comes from the model's checkpoint.",
        examples=[{"global": 0.41, "stripe_1": 0.12, "stripe_2": 0.2}])
    confidence: float | None = Field(None, ge=0, le=1, description=CONFIDENCE_DOC,
                                     examples=[0.62])
    match: MatchLevel | None = Field(None, description=MATCH_DOC, examples=["strong"])


class Sighting(BaseModel):
    crop_id: int = Field(..., examples=[42])
    camera: str | None = Field(None, examples=["gate-3"])
    captured_at: UTCDateTime | None = Field(None, examples=["2026-05-01T12:30:00Z"])
    file_name: str | None = Field(None, examples=["CUHK01/0363004.png"])
    image_url: str = Field(..., examples=["/crops/42/image"])
    thumbnail_url: str = Field(..., examples=["/crops/42/thumbnail"])


class PersonSightings(BaseModel):
    person_id: str = Field(..., examples=["track-0017"])
    sightings: list[Sighting] = Field(..., description="In capture-time order; crops without "
                                      "a time last.")
    truncated: bool = Field(False, description="More crops exist than were returned.",
                            examples=[False])


class CropSighting(Sighting):
    confidence: float | None = Field(
        None, ge=0, le=1, description="P(same person) of its score in the search by example "
        "from the crop (the example map of the calibration); null for the crop itself, "
        "without calibration, or for a crop found by person id alone outside the best 500.",
        examples=[0.81])
    by: Literal["self", "appearance", "person_id", "both"] = Field(
        ..., description="`self`: the crop asked about. `appearance`: its search by example "
        "scores it at or above `threshold`. `person_id`: it has the crop's stored person/"
        "track id. `both`: both.", examples=["appearance"])


class CameraSpan(BaseModel):
    camera: str | None = Field(None, examples=["gate-3"])
    first_seen: UTCDateTime | None = Field(None, examples=["2026-05-01T12:30:00Z"])
    last_seen: UTCDateTime | None = Field(None, examples=["2026-05-01T12:41:00Z"])
    count: int = Field(..., description="Sightings at this camera.", examples=[4])


class CropSightings(BaseModel):
    crop_id: int = Field(..., examples=[42])
    person_id: str | None = Field(None, description="The crop's person/track id, when known.",
                                  examples=[None])
    threshold: float | None = Field(
        None, description="Same-person score threshold of the search by example, chosen on "
        "dev for `precision` (`tbps calibrate`); null without calibration (then person ids "
        "alone answer).", examples=[1.02])
    precision: float | None = Field(None, description="Of dev image pairs scoring at least "
                                    "`threshold`: the share that are the same person.",
                                    examples=[0.9])
    recall: float | None = Field(None, description="Of dev same-person image pairs: the share "
                                 "scoring at least `threshold`.", examples=[0.41])
    truncated: bool = Field(False, description="More sightings exist than the 500 returned.",
                            examples=[False])
    cameras: list[CameraSpan] = Field(..., description="One entry per camera, in order of "
                                      "first sighting.")
    sightings: list[CropSighting] = Field(..., description="In capture-time order (crops "
                                          "without a time last), the crop itself included.")


class CameraInfo(BaseModel):
    name: str = Field(..., examples=["gate-3"])
    description: str | None = Field(None, examples=["north entrance"])
    crop_count: int = Field(0, description="Crops not deleted.", examples=[120])


class PersonHit(BaseModel):
    person_id: str | None = Field(..., description="Person/track id; null for a crop with "
                                  "none, which is its own entry.", examples=["track-0017"])
    score: float = Field(..., description="Score of the person's best crop.", examples=[0.734])
    crops: list[SearchHit] = Field(..., description="The person's best matching crops, best "
                                   "first (up to 3).")
    first_seen: UTCDateTime | None = Field(None, description="Earliest matching crop's time.",
                                        examples=["2026-05-01T12:30:00Z"])
    last_seen: UTCDateTime | None = Field(None, description="Latest matching crop's time.",
                                       examples=["2026-05-01T12:41:00Z"])
    crop_count: int = Field(..., description="Matching crops of this person.", examples=[5])
    confidence: float | None = Field(None, ge=0, le=1, description="Of the person's best crop. "
                                     + CONFIDENCE_DOC, examples=[0.62])
    match: MatchLevel | None = Field(None, description=MATCH_DOC, examples=["strong"])


class SearchResponse(BaseModel):
    query: str | None = Field(..., description="The description searched for (null when "
                              "searching by example or image alone).",
                              examples=["a man in a red jacket"])
    like: list[int] | None = Field(None, description="The example crops searched from.",
                                   examples=[None])
    index_version: str = Field(..., description="Index version that answered.",
                               examples=["20261123T110000000000Z"])
    took_ms: float = Field(..., description="Server time for the search.", examples=[12.5])
    group_by: Literal["crop", "person"] = Field("crop", description="As requested.",
                                                examples=["crop"])
    matching: int = Field(0, description="Searchable crops that pass the filters, examples "
                          "and dismissed crops left out (while the first index builds: those "
                          "indexed so far).",
                          examples=[1234])
    score_max: float = Field(1.0, description="The best possible score of this model: the "
                             "number of unit blocks its parts form.", examples=[2.0])
    hits: list[SearchHit] = Field(..., description="Ranked crops (group_by=crop).")
    persons: list[PersonHit] = Field(default_factory=list,
                                     description="Ranked persons (group_by=person).")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null "
                                    "on the last page.", examples=[None])
    good_matches: int | None = Field(
        None, ge=0, description="Matching crops whose match is strong or possible (not the "
        "gallery's size): counted among the candidates this search ranked, and when all of "
        "them are good, among the best 1000 (1000 then means at least 1000). Null without "
        "calibration.", examples=[3])
    best_match: MatchLevel | None = Field(
        None, description="The level of the best matching crop of the whole search (not only "
        "this page): `weak` means no good match. Null without calibration or without hits.",
        examples=["possible"])


class Health(BaseModel):
    status: str = Field(..., description="`ok`", examples=["ok"])


class IndexingOut(BaseModel):
    job_id: int = Field(..., examples=[1])
    kind: str = Field(..., description="`add` (pending crops, or the first index, searchable "
                      "as it grows) or `reindex` (a full rebuild).", examples=["add"])
    status: Literal["queued", "running"] = Field(..., examples=["running"])
    done: int = Field(..., description="Crops of the gallery indexed (or failed) so far.",
                      examples=[1024])
    total: int = Field(..., description="Crops in the gallery.", examples=[4527])
    eta_s: float | None = Field(None, description="Seconds left, estimated from the job's "
                                "progress; null until it has some.", examples=[190.0])
    progress: float = Field(0.0, ge=0, le=1, description="The job's own fraction done (crops "
                            "become searchable a chunk at a time).", examples=[0.25])
    more_queued: bool = Field(False, description="Another index job waits behind this one: "
                              "`eta_s` is this job's.", examples=[False])
    summary: str = Field(..., description="The same in words.",
                         examples=["indexing 1024 of 4527 crops, ETA 190 s"])


class GalleryStatus(BaseModel):
    crops: int = Field(..., description="Crops in the gallery (not deleted).", examples=[4527])
    indexed: int = Field(..., examples=[1024])
    pending: int = Field(..., description="Crops waiting to be indexed.", examples=[3503])
    failed: int = Field(..., description="Crops whose image could not be encoded.",
                        examples=[0])
    searchable: int = Field(..., description="Crops in the live index.", examples=[1024])
    index_version: str | None = Field(None, examples=["20261123T110000000000Z+3"])
    indexing: IndexingOut | None = Field(None, description="The index job queued or running, "
                                         "if any.")


class Readiness(BaseModel):
    status: Literal["ready", "not ready"] = Field(..., examples=["ready"])
    model: str | None = Field(None, description="Loaded model name.", examples=["tiny-clip"])
    index_version: str | None = Field(None, description="Live index version.",
                                      examples=["20261123T110000000000Z"])
    index_count: int = Field(0, description="Vectors in the live index.", examples=[1000])
    reason: str | None = Field(None, description="Why not ready; when ready, why the previous "
                               "index version serves (the live one is corrupt or gone).",
                               examples=[None])
    indexing: IndexingOut | None = Field(None, description="An index job queued or running: "
                                         "ready means searches answer from what is indexed "
                                         "so far.")


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="What went wrong and what to do.",
                        examples=["no crop with id 12"])


BAD_BODY = {400: {"model": ErrorResponse, "description": "The body could not be parsed"}}
JSON_BODY = {**BAD_BODY, 415: {"model": ErrorResponse, "description": "The body is not sent "
                               "as application/json"}}
BACKEND_DOWN = {503: {"model": ErrorResponse, "description": "The index backend (Milvus) is "
                      "unreachable; try again (Retry-After)"}}
STORAGE_ERRORS = {
    503: {"model": ErrorResponse, "description": "Storage not writable; try again later"},
    507: {"model": ErrorResponse, "description": "The disk is full"}}


class FileOutcome(BaseModel):
    name: str = Field(..., description="The uploaded file's name.", examples=["cam3-0001.jpg"])
    status: Literal["added", "duplicate", "rejected"] = Field(..., examples=["added"])
    crop_id: int | None = Field(None, description="New crop id, or the existing crop a "
                                "duplicate repeats.", examples=[42])
    reason: str | None = Field(None, description="Why a file was rejected, or which crop a "
                               "duplicate repeats.",
                               examples=["not an image (send JPEG, PNG, BMP or WebP)"])


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(..., examples=[7])
    kind: str = Field(..., description="`reindex` (full) or `add` (new crops).",
                      examples=["reindex"])
    status: Literal["queued", "running", "succeeded", "failed"] = Field(..., examples=["running"])
    progress: float = Field(..., ge=0, le=1, description="Fraction done, 0-1.", examples=[0.4])
    message: str | None = Field(None, description="Progress or error text.",
                                examples=["encoded 400/1000 crops"])
    created_at: UTCDateTime = Field(..., examples=["2026-05-01T12:30:00Z"])
    started_at: UTCDateTime | None = Field(None, examples=["2026-05-01T12:30:01Z"])
    finished_at: UTCDateTime | None = Field(None, examples=[None])
    attempts: int = Field(0, description="Runs started; more than one when a worker died "
                          "while running it and it was requeued.", examples=[1])


class UploadResponse(BaseModel):
    added: int = Field(..., description="New crops stored.", examples=[2])
    duplicates: int = Field(..., description="Files already in the gallery.", examples=[0])
    rejected: int = Field(..., description="Files refused (see files).", examples=[1])
    files: list[FileOutcome] = Field(..., description="One outcome per file, in upload order.")
    job: JobOut | None = Field(None, description="The job that makes the new crops searchable.")


class DeleteResponse(BaseModel):
    deleted: int = Field(..., description="Crops deleted.", examples=[3])
    crop_ids: list[int] = Field(..., description="Their ids.", examples=[[4, 5, 9]])


class CameraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Label = Field(..., description="Unique camera name (no control characters; surrounding "
                        "spaces are dropped).", examples=["gate-3"])
    description: str | None = Field(None, max_length=1000, examples=["north entrance"])


class CameraRename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Label = Field(..., description="New unique name.", examples=["gate-3-north"])
    description: str | None = Field(None, max_length=1000, examples=["north entrance"])


class CameraOut(BaseModel):
    id: int = Field(..., examples=[1])
    name: str = Field(..., examples=["gate-3"])
    description: str | None = Field(None, examples=["north entrance"])
    crop_count: int = Field(0, description="Crops not deleted.", examples=[120])
    created_at: UTCDateTime = Field(..., examples=["2026-05-01T12:30:00Z"])


class IndexInfo(BaseModel):
    version: str | None = Field(None, examples=["20261123T110000000000Z"])
    count: int = Field(0, examples=[1000])
    dim: int = Field(0, examples=[512])
    factory: str | None = Field(None, examples=["IDMap2,Flat"])


class Stats(BaseModel):
    crops: dict[str, int] = Field(..., description="Crops by status.",
                                  examples=[{"indexed": 990, "pending": 10}])
    cameras: int = Field(..., examples=[4])
    persons: int = Field(..., description="Distinct person/track ids.", examples=[250])
    index: IndexInfo
    jobs: dict[str, int] = Field(..., description="Jobs by status.",
                                 examples=[{"succeeded": 3}])
    searches: int = Field(..., description="Searches in the audit log.", examples=[17])


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(..., examples=[1])
    at: UTCDateTime = Field(..., examples=["2026-05-01T12:30:00Z"])
    actor: str = Field(..., description="Key name, or `anonymous`.", examples=["ops"])
    action: str = Field(..., examples=["crops.delete"])
    target: str | None = Field(None, examples=["crop:42"])
    detail: dict | None = Field(None, examples=[{"camera": "gate-3"}])
    client: str | None = Field(None, description="Client address.", examples=["127.0.0.1"])


class AdminCrop(BaseModel):
    crop_id: int = Field(..., examples=[42])
    status: Literal["pending", "indexed", "failed"] = Field(
        ..., description="`pending` until an index job has encoded it; `failed`: see error.",
        examples=["indexed"])
    error: str | None = Field(None, description="Why indexing failed.", examples=[None])
    camera: str | None = Field(None, examples=["gate-3"])
    captured_at: UTCDateTime | None = Field(None, examples=["2026-05-01T12:30:00Z"])
    person_id: str | None = Field(None, examples=["track-0017"])
    file_name: str | None = Field(None, examples=["cam3-0001.jpg"])
    width: int = Field(..., examples=[64])
    height: int = Field(..., examples=[128])
    added_at: UTCDateTime = Field(..., examples=["2026-05-01T12:31:00Z"])
    image_url: str = Field(..., examples=["/crops/42/image"])
    thumbnail_url: str = Field(..., examples=["/crops/42/thumbnail"])


class AdminCropPage(BaseModel):
    total: int = Field(..., description="Crops matching the filters, over all pages.",
                       examples=[120])
    crops: list[AdminCrop] = Field(..., description="Newest first.")
