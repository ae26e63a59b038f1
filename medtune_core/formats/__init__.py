"""Record formats: typed canonical records, a registry of on-disk formats, detection and conversion."""

from medtune_core.formats import chat, preference, text_mcq  # noqa: F401  (register the formats)
from medtune_core.formats.base import FORMATS, RecordFormat, detect_row_format, get_format, register
from medtune_core.formats.convert import (
    EN_MCQ_TEMPLATE,
    ZH_MCQ_TEMPLATE,
    MCQPromptTemplate,
    mcq_to_conversation,
    to_kind,
)
from medtune_core.formats.records import (
    Conversation,
    Message,
    MultipleChoice,
    PreferencePair,
    Record,
    RecordKind,
    TextDocument,
)

__all__ = [
    "EN_MCQ_TEMPLATE",
    "FORMATS",
    "ZH_MCQ_TEMPLATE",
    "Conversation",
    "MCQPromptTemplate",
    "Message",
    "MultipleChoice",
    "PreferencePair",
    "Record",
    "RecordFormat",
    "RecordKind",
    "TextDocument",
    "detect_row_format",
    "get_format",
    "mcq_to_conversation",
    "register",
    "to_kind",
]
