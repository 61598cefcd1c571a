"""The data layer: read local dataset files, validate rows as typed records, convert feedback to pairs."""

from rlhfkit.data.convert import edit_to_pair, ranking_to_pairs, ratings_to_pairs, to_preferences
from rlhfkit.data.readers import SUPPORTED_FORMATS, DataError, Row, read_rows
from rlhfkit.data.records import (
    INSTRUCTGPT_FLAGS,
    RECORD_TYPES,
    CandidatesRecord,
    EditRecord,
    InstructGPTFlag,
    Message,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    Record,
    SFTRecord,
    Text,
    UnpairedRecord,
    load_records,
    validate_record,
)

__all__ = [
    "INSTRUCTGPT_FLAGS",
    "RECORD_TYPES",
    "SUPPORTED_FORMATS",
    "CandidatesRecord",
    "DataError",
    "EditRecord",
    "InstructGPTFlag",
    "Message",
    "PreferenceRecord",
    "RankingRecord",
    "RatingRecord",
    "Record",
    "Row",
    "SFTRecord",
    "Text",
    "UnpairedRecord",
    "edit_to_pair",
    "load_records",
    "ranking_to_pairs",
    "ratings_to_pairs",
    "read_rows",
    "to_preferences",
    "validate_record",
]
